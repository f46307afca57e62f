# Preprocessing reference test (tests/vision_preprocess_reference.rs): scripts/preprocess_ref.py
# transcribes Ultralytics' LetterBox with OpenCV and classify_transforms with Pillow (torchvision
# resizes the PIL image with PIL's own bilinear), so cv2 and PIL join the venv; the test images
# are two real photos shipped inside the scikit-image wheel (unpacked only, scikit-image is not
# installed). tests/vision_yolo.rs uses the same cv2 (scripts/yolo_ref.py letterbox) and
# astronaut.png.
OPENCV_HEADLESS_VERSION := 4.10.0.84
PILLOW_VERSION := 11.0.0
SKIMAGE_VERSION := 0.24.0
PRE_IMAGES := $(CACHE)/images

.PHONY: pre-deps
pre-deps: $(CACHE)/pre-opencv-$(OPENCV_HEADLESS_VERSION).stamp \
  $(CACHE)/pre-pillow-$(PILLOW_VERSION).stamp $(CACHE)/pre-images-skimage-$(SKIMAGE_VERSION).stamp

# numpy is repeated so that pip cannot move it away from the project's pin.
$(CACHE)/pre-opencv-$(OPENCV_HEADLESS_VERSION).stamp: $(CACHE)/pydeps.stamp
	$(PY) -m pip install -q --disable-pip-version-check \
	  opencv-python-headless==$(OPENCV_HEADLESS_VERSION) numpy==$(NUMPY_VERSION)
	touch $@

$(CACHE)/pre-pillow-$(PILLOW_VERSION).stamp: $(CACHE)/pydeps.stamp
	$(PY) -m pip install -q --disable-pip-version-check pillow==$(PILLOW_VERSION)
	touch $@

$(CACHE)/pre-images-skimage-$(SKIMAGE_VERSION).stamp: $(CACHE)/pydeps.stamp
	mkdir -p $(CACHE)/wheels $(PRE_IMAGES)
	cd $(CACHE)/wheels && $(PY) -m pip download -q --disable-pip-version-check --no-deps \
	  --only-binary=:all: --python-version 3.11 --platform manylinux_2_17_x86_64 \
	  scikit-image==$(SKIMAGE_VERSION)
	unzip -o -q -j $$(ls $(CACHE)/wheels/scikit_image-$(SKIMAGE_VERSION)-*.whl | head -n 1) \
	  'skimage/data/astronaut.png' 'skimage/data/coffee.png' -d $(PRE_IMAGES)
	touch $@

EXTRA_DEPS += pre-deps
