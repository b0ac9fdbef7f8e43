"""NNabla contexts: which device runs the graphs."""


def gpu_available():
    try:
        from nnabla_ext.cuda import get_device_count
        return get_device_count() > 0
    except Exception:
        return False


def set_context(name=None, device_id=0, verbose=True):
    """Set NNabla's default context. name None → cudnn when a GPU is present, else cpu.

    An explicit GPU context without a GPU falls back to the CPU with a notice.
    """
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    if name is None:
        name = "cudnn" if gpu_available() else "cpu"
    elif name in ("cuda", "cudnn") and not gpu_available():
        if verbose:
            print("context %s: no GPU or nnabla CUDA extension found, using the CPU" % name)
        name = "cpu"
    if verbose:
        print("context: %s" % name)
    ctx = get_extension_context(name, device_id=str(device_id))
    nn.set_default_context(ctx)
    return name
