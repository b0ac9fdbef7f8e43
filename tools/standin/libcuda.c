/* A stand-in for the NVIDIA driver's libcuda.so.1 on a machine without a GPU, for
 * `make gpu-env-check` alone: every function returns success without doing anything, so that
 * NNabla's CUDA extension loads and its start-up (init_cuda, NCCL and MPI found, the
 * communicator registered) runs. It reports STANDIN_GPUS devices (default 2) of compute
 * capability STANDIN_CC (default "8.0") and no driver entry points (cuGetProcAddress fails):
 * the CUDA runtime's first device call fails there, as it must without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUCCESS 0
#define NOT_FOUND 500

static int gpus(void) {
  const char *n = getenv("STANDIN_GPUS");
  return n ? atoi(n) : 2;
}

int cuInit(unsigned flags) { (void)flags; return SUCCESS; }
int cuDriverGetVersion(int *version) { *version = 12020; return SUCCESS; }
int cuDeviceGetCount(int *count) { *count = gpus(); return SUCCESS; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return SUCCESS; }

int cuDeviceGetName(char *name, int len, int device) {
  snprintf(name, len, "Stand-in GPU %d", device);
  return SUCCESS;
}

/* 75, 76: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, _MINOR */
int cuDeviceGetAttribute(int *value, int attribute, int device) {
  const char *cc = getenv("STANDIN_CC");
  int major = 8, minor = 0;
  (void)device;
  if (cc) sscanf(cc, "%d.%d", &major, &minor);
  *value = attribute == 75 ? major : attribute == 76 ? minor : 0;
  return SUCCESS;
}

/* no driver entry points: the CUDA runtime's first device call fails */
int cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
  (void)symbol; (void)version; (void)flags;
  *pfn = NULL;
  return NOT_FOUND;
}
int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags,
                        void *status) {
  (void)status;
  return cuGetProcAddress(symbol, pfn, version, flags);
}

int cuGetErrorName(int error, const char **text) { (void)error; *text = "STANDIN"; return SUCCESS; }
int cuGetErrorString(int error, const char **text) {
  (void)error; *text = "stand-in driver: no GPU"; return SUCCESS;
}

/* the driver functions libnnabla_cuda-120_8.so links by name (virtual memory, contexts) */
#define NOTHING(name) int name(void) { return SUCCESS; }
NOTHING(cuCtxSetCurrent)
NOTHING(cuDevicePrimaryCtxRetain)
NOTHING(cuMemAddressFree)
NOTHING(cuMemAddressReserve)
NOTHING(cuMemCreate)
NOTHING(cuMemGetAllocationGranularity)
NOTHING(cuMemMap)
NOTHING(cuMemRelease)
NOTHING(cuMemSetAccess)
NOTHING(cuMemUnmap)
