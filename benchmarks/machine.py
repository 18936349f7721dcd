"""What machine a benchmark ran on (imported by the benchmark scripts in this folder)."""

import os
import platform


def set_single_thread_env() -> None:
    """One thread for every library; call it before numpy/JAX/torch load. XLA's CPU client
    sizes its thread pool from the CPU affinity (hence taskset), and Eigen's own
    multi-threading is switched off explicitly. Child processes inherit the variables."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = "1"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (Linux), else the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
