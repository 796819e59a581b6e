"""What every benchmark script shares: the machine description of its header (``machine``) and
child-process plumbing (``procs``). The HTTP load generator is ``bench/loadgen.py``."""
