# call 2: the GGUF as a safetensors folder; the caches by concurrent precompute workers; then one process per
# (method, seed) of three benches: forgetting on condition-drugs and on sentiment-answer, and the SmolLM2-probe bench.
# As run on the GPU machine (`DEADLINE=470 FINAL=60 bash lanes.sh`): robustkd and its wheels installed in /tmp/site,
# the GGUF carried in two halves (/tmp/m/a, .dev/b); .dev/convert.py is gguf_to_folder.py beside this file.
# 33 processes did not fit the GPU's memory (README.md): run fewer.
set -u
export PATH=${BIN:-/tmp/site/bin}:$PATH PYTHONPATH=${PYTHONPATH:-/tmp/site} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T0=$(date +%s); DEADLINE=${DEADLINE:-470}; FINAL=${FINAL:-60}; SEEDS=${SEEDS:-3}; TH=${TH:-1}
REPO=$PWD; OUT=${OUT:-/tmp/out}; mkdir -p $OUT
W=${W:-/tmp/w}; L=$W/logs; mkdir -p $W $L
t() { echo "$1 at $(( $(date +%s) - T0 ))s" | tee -a $L/times.log; }
if [ -n "${MODEL:-}" ]; then M=$MODEL; else
  G=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf; M=/tmp/m/SmolLM2-135M-Instruct
  [ -f $G ] || cat /tmp/m/a .dev/b > $G
  sha256sum $G
  [ -d $M ] || python3 .dev/convert.py $G $M 2>&1 | grep -v "Converting\|Loading\|Writing\|deprecated"
fi
cd $W; export ROBUSTKD_CACHE_ROOT=$W/cache
t "model ready"
P="robustkd precompute --model $M --limit ${LIMIT:-200} --general-prompts --sparse top-k ${X:-}"
for w in 0 1 2 3; do $P --task condition-drugs --worker $w --workers 4 > $L/pre-cd-$w.log 2>&1 & done
for w in 0 1; do $P --task sentiment-answer --worker $w --workers 2 > $L/pre-sa-$w.log 2>&1 & done
for w in 0 1; do robustkd precompute --model $M --task sentiment-rt-drugs --head linear-probe ${PRL:-} ${X:-} --worker $w \
    --workers 2 > $L/pre-pr-$w.log 2>&1 & done
wait; t "caches"
COMMON="--model $M --limit ${LIMIT:-200} --batch-groups 8 --eval-rows 128 --threads $TH ${X:-}"
CD="robustkd bench --suite forgetting --task condition-drugs $COMMON --max-steps ${CDSTEPS:-60} --out runs/forget-cd"
SA="robustkd bench --suite forgetting --task sentiment-answer $COMMON --max-steps ${SASTEPS:-150} --out runs/forget-sa"
PR="robustkd bench --task sentiment-rt-drugs --model $M --head linear-probe ${PRL:-} ${X:-} --adapter lora --epochs ${EPOCHS:-3} \
    --threads $TH --out runs/bench-probe"
CDF=runs/forget-cd/condition-drugs; SAF=runs/forget-sa/sentiment-answer; PRF=runs/bench-probe/sentiment-rt-drugs-linear-probe
left() { local s=$(( DEADLINE - ($(date +%s) - T0) )); [ $s -gt 1 ] && echo $s || echo 1; }
lane() {  # lane NAME BENCH FOLDER DELAY METHOD...: (first method, seed 0) evaluates the teacher, then the rest start
  local name=$1 bench=$2 folder=$3 delay=$4 first=$5 p m s; shift 4
  timeout $(left) $bench --methods $first --seeds 1 > $L/$name-$first-0.log 2>&1 & p=$!
  while [ ! -f $folder/teacher/metrics.json ] && kill -0 $p 2>/dev/null; do sleep 2; done
  t "$name teacher"; sleep $delay
  for m in "$@"; do for s in $(seq 0 $((SEEDS - 1))); do
    [ $m = $first ] && [ $s = 0 ] && continue
    timeout $(left) $bench --methods $m --first-seed $s --seeds 1 > $L/$name-$m-$s.log 2>&1 &
  done; done
  wait; t "$name lane"
}
done_seeds() {  # seeds 0..k-1 finished (planned.json written) for every method
  local folder=$1 k=0 m; shift
  while [ $k -lt $SEEDS ]; do for m in "$@"; do [ -f $folder/$m/seed$k/planned.json ] || break 2; done; k=$((k+1)); done
  echo $k
}
lane cd "$CD" $CDF 0 ft lora ours ours-general &
lane pr "$PR" $PRF 0 ft lp-ft ours &
[ -z "${NOSA:-}" ] && { sleep ${SADELAY:-45}; lane sa "$SA" $SAF 0 ft lora ours ours-general; } &
while [ -n "$(jobs -r)" ]; do sleep 5; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $L/gpu.log 2>&1; done
t "lanes"
k1=$(done_seeds $CDF ft lora ours ours-general); k2=$(done_seeds $PRF ft lp-ft ours); k3=$(done_seeds $SAF ft lora ours ours-general)
echo "seeds done: cd $k1, probe $k2, sa $k3" | tee -a $L/times.log
rm -f $CDF/results.json $PRF/results.json $SAF/results.json
[ $k1 -gt 0 ] && { timeout $FINAL $CD --methods ft,lora,ours,ours-general --seeds $k1 > $L/cd-final.log 2>&1 & }
[ $k2 -gt 0 ] && { timeout $FINAL $PR --methods ft,lp-ft,ours --seeds $k2 > $L/pr-final.log 2>&1 & }
[ $k3 -gt 0 ] && { timeout $FINAL $SA --methods ft,lora,ours,ours-general --seeds $k3 > $L/sa-final.log 2>&1 & }
wait; t "final"
ls -d cache/* > $L/caches.txt 2>&1
tar czf $OUT/runs.tgz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoint' runs 2>/dev/null
tar czf $OUT/logs.tgz logs
cat $L/times.log; grep -h "in [0-9]*s ->\|Error\|error:" $L/*final.log | cut -c1-300; ls -la $OUT
