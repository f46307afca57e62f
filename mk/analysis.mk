# Report tests: headless Chromium screenshots the HTML report (tests/report_html.rs).
# Debian's `chromium` package tracks the distribution's security updates, so it is pinned by
# distribution rather than by version; the check keeps the step idempotent and offline-safe.
.PHONY: analysis-chromium
analysis-chromium:
	@dpkg -s chromium >/dev/null 2>&1 || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }

EXTRA_DEPS += analysis-chromium
