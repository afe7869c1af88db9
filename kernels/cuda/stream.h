// Forward declarations of the CUDA handle types, so launcher declarations can be
// included by host code (and by builds without the CUDA toolkit). They match the
// typedefs in CUDA's driver_types.h exactly, which makes the redeclaration legal.
#pragma once

struct CUstream_st;
struct CUevent_st;
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
