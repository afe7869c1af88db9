# tandem_find_cuda_library(PKG HEADER LIBNAMES... TARGET name): finds a CUDA
# library (cuDNN, NCCL) by its header and library in <PKG>_ROOT (variable or
# environment), the CUDA toolkit, or - where it ships only inside PyTorch's Python
# environment - the pip package folder given as <PKG>_ROOT. Defines <PKG>_FOUND,
# <PKG>_INCLUDE_DIR, <PKG>_LIBRARY and the imported target.
include(FindPackageHandleStandardArgs)
macro(tandem_find_cuda_library pkg header)
  cmake_parse_arguments(_tfcl "" "TARGET" "NAMES" ${ARGN})
  find_path(${pkg}_INCLUDE_DIR ${header}
    HINTS ${${pkg}_ROOT} $ENV{${pkg}_ROOT} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}
    PATH_SUFFIXES include)
  find_library(${pkg}_LIBRARY NAMES ${_tfcl_NAMES}
    HINTS ${${pkg}_ROOT} $ENV{${pkg}_ROOT} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
    PATH_SUFFIXES lib lib64)
  find_package_handle_standard_args(${pkg} DEFAULT_MSG ${pkg}_LIBRARY ${pkg}_INCLUDE_DIR)
  if(${pkg}_FOUND AND NOT TARGET ${_tfcl_TARGET})
    add_library(${_tfcl_TARGET} UNKNOWN IMPORTED)
    set_target_properties(${_tfcl_TARGET} PROPERTIES IMPORTED_LOCATION ${${pkg}_LIBRARY}
      INTERFACE_INCLUDE_DIRECTORIES ${${pkg}_INCLUDE_DIR})
  endif()
endmacro()
