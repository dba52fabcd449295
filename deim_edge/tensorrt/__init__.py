"""TensorRT, without torch: building engines (build.py, with the FP32 rules of fp32.py) apart from running them
(runtime.py, on the CUDA memory of cuda.py, building and caching engines for ONNX files and bundles). tensorrt is
imported only when an engine is built or run; the engine and bundle files, and BuildOptions, are
formats.tensorrt's."""
