import os

# Keep the suite predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
