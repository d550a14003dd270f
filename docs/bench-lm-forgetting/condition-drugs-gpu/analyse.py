"""The forgetting bench's analysis over run folders another machine trained: `run_forgetting` with the caches'
locations as the runs were planned (their manifests suffice; every run and WiSE point is reused, nothing trains).
python3 analyse.py OUT SEEDS METHODS   e.g. analyse.py runs/forget-cd 2 ft,lora,ours,ours-general
Run it where the runs were planned: the caches under /tmp/w/cache, ROBUSTKD_CACHE_ROOT=/tmp/w/cache."""
import sys

from robustkd.bench import BenchConfig
from robustkd.forgetting import run_forgetting

CACHE = "/tmp/w/cache/"
MAIN = CACHE + "a4baafc3b21bf8bfffa0f29446ddf927f1e8be372cb23ad6fea133d697cb409c"  # condition-drugs
TRANSFER = CACHE + "4b4aac641ff2c2d5b206d04ccbfdc5aa00f6808b7f186e6236ed9619c66f9221"  # sentiment-answer

out, seeds, methods = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
cfg = BenchConfig(suite="forgetting", task="condition-drugs", model="/tmp/m/SmolLM2-135M-Instruct", limit=200,
                  batch_groups=8, eval_rows=128, threads=2, max_steps=60, out=out, methods=methods, seeds=seeds)
run_forgetting(cfg, {"main": MAIN, "transfer": TRANSFER}, print)
