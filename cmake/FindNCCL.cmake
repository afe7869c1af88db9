# Finds NCCL (NCCL_ROOT, the CUDA toolkit, or PyTorch's nvidia/nccl package folder
# given as NCCL_ROOT). Defines NCCL_FOUND and the target NCCL::nccl.
include(${CMAKE_CURRENT_LIST_DIR}/TandemFindCudaLibrary.cmake)
tandem_find_cuda_library(NCCL nccl.h NAMES nccl libnccl.so.2 TARGET NCCL::nccl)
