"""What machine a benchmark ran on (imported by the benchmark scripts in this folder)."""

import platform


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
