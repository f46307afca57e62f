# Export tests: scripts/promcheck.py parses the node-exporter textfile with the reference
# Prometheus client's parser (tests/export_textfile.rs).
PROMETHEUS_CLIENT_VERSION := 0.21.1

.PHONY: export-deps
export-deps: $(CACHE)/export-prometheus-client-$(PROMETHEUS_CLIENT_VERSION).stamp
$(CACHE)/export-prometheus-client-$(PROMETHEUS_CLIENT_VERSION).stamp: $(CACHE)/pydeps.stamp
	$(PY) -m pip install -q --disable-pip-version-check prometheus-client==$(PROMETHEUS_CLIENT_VERSION)
	touch $@

EXTRA_DEPS += export-deps
