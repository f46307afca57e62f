# Metrics reference tests: scripts/metrics_ref.py scores synthetic predictions with pycocotools'
# COCOeval (tests/vision_metrics_reference.rs checks our COCO-mode mAP against it).
PYCOCOTOOLS_VERSION := 2.0.10

.PHONY: metrics-deps
metrics-deps: $(CACHE)/pycocotools-$(PYCOCOTOOLS_VERSION).stamp
$(CACHE)/pycocotools-$(PYCOCOTOOLS_VERSION).stamp: $(CACHE)/pydeps.stamp
	$(PY) -m pip install -q --disable-pip-version-check pycocotools==$(PYCOCOTOOLS_VERSION)
	touch $@

EXTRA_DEPS += metrics-deps
