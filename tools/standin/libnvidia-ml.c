/* A stand-in for the NVIDIA driver's libnvidia-ml.so.1 (NVML) on a machine without a GPU, for
 * `make gpu-env-check` alone: NNabla's CUDA extension lists the GPUs' names through NVML at
 * import (its list of unsupported GPUs). STANDIN_GPUS devices (default 2), named "Stand-in
 * GPU <n>"; every call succeeds. */
#include <stdio.h>
#include <stdlib.h>

#define SUCCESS 0

int nvmlInit(void) { return SUCCESS; }
int nvmlInit_v2(void) { return SUCCESS; }
int nvmlInitWithFlags(unsigned flags) { (void)flags; return SUCCESS; }
int nvmlShutdown(void) { return SUCCESS; }
const char *nvmlErrorString(int result) { (void)result; return "stand-in NVML"; }

int nvmlDeviceGetCount_v2(unsigned *count) {
  const char *n = getenv("STANDIN_GPUS");
  *count = n ? (unsigned)atoi(n) : 2;
  return SUCCESS;
}
int nvmlDeviceGetCount(unsigned *count) { return nvmlDeviceGetCount_v2(count); }

int nvmlDeviceGetHandleByIndex_v2(unsigned index, void **device) {
  *device = (void *)(unsigned long)(index + 1);
  return SUCCESS;
}
int nvmlDeviceGetHandleByIndex(unsigned index, void **device) {
  return nvmlDeviceGetHandleByIndex_v2(index, device);
}

int nvmlDeviceGetName(void *device, char *name, unsigned length) {
  snprintf(name, length, "Stand-in GPU %lu", (unsigned long)device - 1);
  return SUCCESS;
}
