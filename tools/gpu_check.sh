#!/usr/bin/env bash
# The project's GPU check, in one go on the GPU test machine (one NVIDIA H100/H200,
# PyTorch and JAX, no TensorFlow, no network): install the wheels brought in .whl/
# (tools/fetch_gpu_wheels.sh fetches them; .whl/ is git-ignored, so the device call must
# name it in carry), then `lsjob bench` under KERAS_BACKEND=jax and torch at batch 64 and
# 512 in float32 and bf16, most important first (512 bf16, the anchor's setting; then 64
# float32, which the 2-epoch run is picked from), then a 2-epoch `lsjob run` of a full-size
# synthetic spec (50,000 / 10,000 images, batch 64) under the backend and precision that
# benched fastest at 64, and one table. Whole script under 8 minutes: every step has its
# own time limit, cut further to what is left, and a step that fails or runs out of time
# is a row saying so; the script goes on. Every progress line starts with the time, and
# the table is rewritten into OUT after every step, so a kill at the device's time limit
# still leaves it.
#
#   bash tools/gpu_check.sh                           # on the GPU machine, from anywhere
#   GPU_CHECK_SCALE=tiny PYTHON=/tmp/venv-jax/bin/python bash tools/gpu_check.sh   # a few minutes on a CPU
#
# The closest rehearsal a CPU allows: a Python 3.12 venv with the GPU machine's versions (jax and
# jaxlib 0.11.2, numpy 2.5.2, torch 2.11.0; absl-py, rich, scikit-learn, matplotlib, h5py, pyyaml,
# typer) and neither keras nor TensorFlow, run at GPU_CHECK_SCALE=tiny with the default
# GPU_CHECK_WHEELS, so that the wheels fetched for 3.12 install as they will there (100 s on 2 cores).
# Where no CPU torch wheel for 3.12 can be had, the torch side runs the same way in a 3.11 venv, with
# wheels fetched by WHEEL_DIR=/tmp/whl311 WHEEL_PYTHON=3.11 tools/fetch_gpu_wheels.sh and
# GPU_CHECK_WHEELS=/tmp/whl311 GPU_CHECK_BACKENDS=torch (80 s on 2 cores, torch 2.13 CPU).
#
# Settings (environment):
#   PYTHON              the Python with the packages (default python3)
#   GPU_CHECK_SCALE     full (default) or tiny: small batches, steps, data and longer limits, for a CPU
#   GPU_CHECK_BACKENDS  default "jax torch"
#   GPU_CHECK_WHEELS    folder of wheels to install first (default .whl; empty: install nothing)
#   GPU_CHECK_SITE      where they are installed (default /tmp/site), put first on PYTHONPATH
#   OUT                 where the table, the JSON, the log and the run's history.csv, manifest.json and run.log go
#                       (the device tool brings back what is written there); unset: a temp folder
# Exit status: 0 when every check, bench and the run succeeded, 1 when any did not, 2 on bad settings.
# At full scale a backend that sees no GPU fails its check and is left out of the benches; where
# JAX cannot build a CUDA graph (some drivers), its bench is run again without CUDA graphs, and
# so are its later steps (the table's header says so).
#
# Everything is inside main, which bash reads whole before running it: the file can be
# edited (or the checkout updated) while a check is running.
main() {
  set -uo pipefail # not -e: a failed step is a row in the table
  cd "$(dirname "$0")/.." || exit 2
  repo=$PWD
  PYTHON=${PYTHON:-python3}
  scale=${GPU_CHECK_SCALE:-full}
  read -ra backends <<< "${GPU_CHECK_BACKENDS:-jax torch}"
  wheels=${GPU_CHECK_WHEELS-.whl}
  site=${GPU_CHECK_SITE:-/tmp/site}

  # budget_s: the whole script, table excepted. bench_s, check_s: one bench run, one backend's
  # check at most; run_s: the time kept back for the 2-epoch run, which then gets all that the
  # budget has left (more when the benches ran quickly); first_jax_s: the first JAX bench, which fills
  # the compile cache the later ones load from. Every step is cut to what budget_s leaves
  # (the run's time kept back while benching), and a bench run is skipped rather than started
  # with less than min_bench_s. Full, expected on an H100 (not yet measured there): ~20 s
  # set-up and checks; a JAX bench run 30-60 s (imports, an eager model build that compiles
  # each small op, then the step's compilation); a torch one 10-25 s (eager); the run 60-100 s.
  case $scale in
    full)
      batches=(64 512) steps=30 warmup=5 bench_s=60 first_jax_s=90 min_bench_s=15 run_s=130 check_s=25
      budget_s=465 train_size=50000 test_size=10000 run_batch=64 need_gpu=(--gpu)
      ;;
    tiny)
      batches=(8 16) steps=3 warmup=1 bench_s=150 first_jax_s=150 min_bench_s=20 run_s=300 check_s=120
      budget_s=1800 train_size=256 test_size=128 run_batch=8 need_gpu=()
      ;;
    *)
      echo "gpu_check: GPU_CHECK_SCALE must be full or tiny, not '$scale'" >&2
      exit 2
      ;;
  esac
  # The full-size synthetic spec, on top of specs/smoke.yaml (synthetic source, method labels, factor 0.1).
  spec=specs/smoke.yaml
  common=(--set "data.train_size=$train_size" --set "data.test_size=$test_size" --set train.epochs=2
    --set runtime.deterministic=false --set output.run=gpu-check)
  # Per backend: jax compiles the step with XLA (jit_compile auto); torch runs eagerly, never
  # torch.compile (auto means eager there too; said outright so the JSON shows it).
  # Expanded as ${sets[@]+...}: an empty array is "unbound" to bash < 4.4 under set -u.
  backend_sets() {
    sets=()
    [[ $1 == torch ]] && sets=(--set runtime.jit_compile=false)
    return 0
  }

  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  if [[ -n ${OUT:-} ]]; then
    out=$OUT
    mkdir -p "$out"
    trap 'rm -rf "$work"' EXIT
  else
    out=$work
  fi
  log=$out/gpu_check.log
  : > "$log"

  say() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$log"; }
  elapsed() { echo $((SECONDS - started)); }
  # A step's time limit: its own, cut to what the budget leaves after `reserve` seconds.
  limit() {
    local own=$1 reserve=$2 left
    left=$((budget_s - $(elapsed) - reserve))
    echo $((own < left ? own : left))
  }
  # The last meaningful line of a step's output: the error, for the table.
  last_line() {
    local line
    line=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1 | tr '\t\r' '  ' | cut -c1-200)
    echo "${line:-(no output)}"
  }
  # A step's row from its exit status: sets status and detail (ok_status when rc is 0).
  outcome() {
    local rc=$1 out=$2 t=$3 ok_status=$4
    if ((rc == 0)); then
      status=$ok_status detail=""
    elif ((rc == 124 || rc == 137)); then
      status="timeout ${t}s" detail="no result within $t s; last output: $(last_line "$out")"
    else
      status="failed rc=$rc" detail=$(last_line "$out")
    fi
  }
  # Append a step's own output to the log, under a heading.
  keep_log() { { printf -- '----- %s\n' "$1"; cat "$2"; printf -- '----- end of %s\n' "$1"; } >> "$log"; }
  # The table so far, into OUT: what comes back if the command is killed before the end.
  render() { "$PYTHON" tools/gpu_check_table.py table "$work" "$out" > /dev/null 2>&1 || true; }

  started=$SECONDS
  say "gpu_check: scale $scale, backends ${backends[*]}, budget $budget_s s; results in $out (work $work)"
  export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
  # keras.json goes here, not into ~/.keras; so does JAX's compile cache, which starts empty
  # and which the JAX benches share (the table's cache column: cold where a bench compiled its step).
  export KERAS_HOME=$work/keras

  # 1. The wheels the machine lacks.
  if [[ -n $wheels ]] && compgen -G "$wheels/*.whl" > /dev/null; then
    say "installing $(compgen -G "$wheels/*.whl" | wc -l) wheels from $wheels/ into $site"
    if ! timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$wheels"/*.whl > "$work/install.log" 2>&1; then
      keep_log install "$work/install.log"
      say "FAILED: pip install of the wheels: $(last_line "$work/install.log")"
      exit 1
    fi
    export PYTHONPATH=$site:$repo${PYTHONPATH:+:$PYTHONPATH}
  else
    say "no wheels in '${wheels:-}' to install: using $PYTHON's own packages"
    export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
  fi
  # Everything lsjob imports, found without importing it (keras alone would look for TensorFlow).
  if ! missing=$("$PYTHON" -c 'import importlib.util as u
m = [n for n in ("keras", "optree", "pydantic", "typer", "yaml", "sklearn", "matplotlib", "h5py") if u.find_spec(n) is None]
print(" ".join(m)); raise SystemExit(bool(m))' 2>&1); then
    say "FAILED: $PYTHON lacks $missing: fetch the wheels (tools/fetch_gpu_wheels.sh) and carry .whl to the machine"
    exit 1
  fi

  # 2. The machine: versions, no TensorFlow, the GPU as nvidia-smi and each backend see it.
  header=$work/header.txt
  timeout 60 "$PYTHON" tools/gpu_check_table.py versions > "$header" 2> "$work/versions.log"
  if command -v nvidia-smi > /dev/null; then
    gpu=$(timeout 15 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 4)
    echo "nvidia-smi: ${gpu:-no answer}" >> "$header"
  else
    echo "nvidia-smi: not found (no NVIDIA driver here)" >> "$header"
  fi
  while IFS= read -r line; do say "$line"; done < "$header"
  [[ -s $work/versions.log ]] && keep_log versions "$work/versions.log"
  # At full scale a backend that sees no GPU (CUDA failed to start: JAX and torch then fall back
  # to the CPU with a warning) is dropped: its benches would spend the budget on CPU timeouts.
  failures=0
  usable=()
  for backend in "${backends[@]}"; do
    say "checking keras on $backend (limit $check_s s)"
    if KERAS_BACKEND=$backend timeout -k 5 "$check_s" "$PYTHON" tools/gpu_check_table.py devices ${need_gpu[@]+"${need_gpu[@]}"} \
      > "$work/check-$backend.log" 2>&1; then
      line=$(last_line "$work/check-$backend.log")
      usable+=("$backend")
    else
      line="$backend: FAILED: $(last_line "$work/check-$backend.log")"
      failures=$((failures + 1))
    fi
    keep_log "check $backend" "$work/check-$backend.log"
    echo "$line" >> "$header"
    say "$line"
  done
  if ((${#usable[@]} == 0)); then
    say "FAILED: no backend can run here; see the lines above and $log"
    render
    exit 1
  fi
  backends=("${usable[@]}")

  # 3. The benches: one process each, each with its own time limit, most important first:
  # batch 512 in bf16 (the anchor's setting), then the run's batch in float32 and bf16 (the
  # run is picked from them), then 512 in float32. Backends alternate, so that one slow
  # backend cannot leave the other without time.
  small=${batches[0]} big=${batches[1]}
  jax_benched=0
  for setting in "$big bf16" "$small off" "$small bf16" "$big off"; do
    read -r batch precision <<< "$setting"
    for backend in "${backends[@]}"; do
      name=bench-$backend-$batch-$precision
      for _ in 1 2; do # a second time only where JAX could not build a CUDA graph
        own=$bench_s
        [[ $backend == jax ]] && ((jax_benched == 0)) && own=$first_jax_s
        t=$(limit "$own" $((run_s + 10)))
        if ((t < min_bench_s)); then
          say "$name: skipped, ${t} s left for it"
          printf '%s\t%s\t%s\tskipped: out of time\t0\tthe budget left %s s\n' "$backend" "$batch" "$precision" "$t" \
            >> "$work/bench.tsv"
          failures=$((failures + 1))
          break
        fi
        say "$name: start (limit $t s, $steps steps after $warmup)"
        t0=$SECONDS
        backend_sets "$backend"
        KERAS_BACKEND=$backend timeout -k 5 "$t" "$PYTHON" -m job bench "$spec" "${common[@]}" ${sets[@]+"${sets[@]}"} \
          --set "train.batch_size=$batch" --set "runtime.mixed_precision=$precision" \
          --steps "$steps" --warmup "$warmup" --out "$work/$name.json" > "$work/$name.log" 2>&1
        rc=$?
        wall=$((SECONDS - t0))
        keep_log "$name" "$work/$name.log"
        ((rc == 0)) && [[ ! -s $work/$name.json ]] && rc=1 # exit 0 without its JSON is no result
        outcome "$rc" "$work/$name.log" "$t" ok
        if ((rc == 0)); then
          say "$name: ok in $wall s: $("$PYTHON" tools/gpu_check_table.py summary "$work/$name.json")"
        else
          say "$name: $status in $wall s: $detail"
          # Reported with some NVIDIA drivers (535): XLA's CUDA graphs fail; without them JAX runs.
          if [[ $backend == jax && ${XLA_FLAGS:-} != *xla_gpu_enable_command_buffer* ]] &&
            grep -q "memset node to a CUDA graph" "$work/$name.log"; then
            export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer="
            say "JAX failed to build a CUDA graph: this bench again, and JAX's later steps, with XLA_FLAGS=$XLA_FLAGS"
            echo "JAX without CUDA graphs (it failed to build one): XLA_FLAGS=$XLA_FLAGS" >> "$header"
            continue
          fi
          failures=$((failures + 1))
        fi
        # Only now: a retry without CUDA graphs compiles afresh (another cache key), as the first did.
        [[ $backend == jax ]] && jax_benched=1
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$batch" "$precision" "$status" "$wall" "$detail" \
          >> "$work/bench.tsv"
        render
        break
      done
    done
  done

  # 4. Two epochs of the full-size synthetic spec, end to end, with the backend and precision
  # that benched fastest at its batch.
  read -r run_backend run_precision <<< "$("$PYTHON" tools/gpu_check_table.py pick "$work" "$run_batch" \
    "${backends[0]}" 2> /dev/null || echo "${backends[0]} off")"
  t=$(limit "$budget_s" 5)
  if ((t < 10)); then
    say "2-epoch run: skipped, ${t} s left"
    printf '%s\t%s\t%s\tskipped: out of time\t0\t\n' "$run_backend" "$run_batch" "$run_precision" >> "$work/run.tsv"
    failures=$((failures + 1))
  else
    say "2-epoch run on $run_backend, $run_precision: start (batch $run_batch, $train_size/$test_size synthetic" \
      "images, limit $t s)"
    t0=$SECONDS
    backend_sets "$run_backend"
    # Compiled afresh, as the first run of a sweep is: the end-to-end figure includes all of it.
    KERAS_BACKEND=$run_backend timeout -k 5 "$t" "$PYTHON" -m job run "$spec" "${common[@]}" ${sets[@]+"${sets[@]}"} \
      --set "train.batch_size=$run_batch" --set "runtime.mixed_precision=$run_precision" \
      --set "output.root=$work/results" --set runtime.compile_cache=off 2>&1 |
      tee "$work/run.log" | while IFS= read -r line; do say "  | $line"; done
    rc=${PIPESTATUS[0]}
    wall=$((SECONDS - t0))
    outcome "$rc" "$work/run.log" "$t" completed
    ((rc == 0)) || failures=$((failures + 1))
    say "2-epoch run: $status in $wall s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run_backend" "$run_batch" "$run_precision" "$status" "$wall" "$detail" \
      >> "$work/run.tsv"
    for f in history.csv manifest.json run.log; do
      [[ -f $work/results/gpu-check/$f && $out != "$work" ]] && cp "$work/results/gpu-check/$f" "$out/$f"
    done
  fi

  # 5. One table.
  say "gpu_check: done in $(elapsed) s; $failures step(s) not ok"
  echo
  "$PYTHON" tools/gpu_check_table.py table "$work" "$out" || say "FAILED: the table ($PYTHON tools/gpu_check_table.py)"
  echo
  say "table, JSON and log in $out"
  ((failures == 0))
}

main "$@"
exit
