// status.cu — names and descriptions of launcher statuses (which are cudaError_t values).
#include "common.cuh"

extern "C" const char *strata_status_name(strata_status status) {
    return cudaGetErrorName((cudaError_t)status);
}

extern "C" const char *strata_status_string(strata_status status) {
    return cudaGetErrorString((cudaError_t)status);
}
