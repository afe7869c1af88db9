# Finds cuDNN (CUDNN_ROOT, the CUDA toolkit, or PyTorch's nvidia/cudnn package
# folder given as CUDNN_ROOT). Defines CUDNN_FOUND and the target CUDNN::cudnn.
include(${CMAKE_CURRENT_LIST_DIR}/TandemFindCudaLibrary.cmake)
tandem_find_cuda_library(CUDNN cudnn.h NAMES cudnn libcudnn.so.9 TARGET CUDNN::cudnn)
