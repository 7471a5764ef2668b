#!/usr/bin/env bash
# Submit every point of a sweep spec as one Slurm array job; prints the array's job id.
#
#   slurm/submit.sh SPEC [sbatch options...] [-- lsjob run options...]
#   e.g. slurm/submit.sh specs/x.yaml --partition=gpu -- --set train.epochs=30
#
# lsjob options after `--` reach every task; the count is taken with the same --set options,
# so one the tasks would refuse is refused here, before anything is queued.
# Run it from the directory the logs (logs/) and, by default, the results (results/) go under.
# LSJOB_THROTTLE=K runs at most K points at once (sbatch --array=...%K). The jobs' own settings
# (LSJOB_RESULTS, LSJOB_VENV, LSJOB_CMD, ...) are described in sweep.sbatch and pass through.
set -euo pipefail

if (($# < 1)); then
  echo "usage: $0 SPEC [sbatch options...] [-- lsjob run options...]" >&2
  exit 2
fi
spec=$1
shift
sbatch_options=()
while (($# > 0)) && [[ $1 != -- ]]; do
  sbatch_options+=("$1")
  shift
done
if (($# > 0)); then shift; fi # the --
lsjob_options=("$@")
sets=()
for ((i = 0; i < ${#lsjob_options[@]}; i++)); do
  case ${lsjob_options[i]} in
    --set) sets+=(--set "${lsjob_options[i + 1]:-}") && i=$((i + 1)) ;;
    --set=*) sets+=("${lsjob_options[i]}") ;;
  esac
done
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

if [[ -n ${LSJOB_VENV:-} ]]; then
  # shellcheck disable=SC1091  # the user's venv, not known here
  source "$LSJOB_VENV/bin/activate"
fi
# The count is the array's size, so it must come from the same spec the tasks will read.
rc=0
count=$(lsjob sweep count "$spec" ${sets[@]+"${sets[@]}"}) || rc=$?
if ((rc != 0)) || ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
  echo "submit.sh: cannot count the points of $spec (lsjob sweep count: exit $rc, output '${count:-}'); nothing submitted" >&2
  exit $((rc != 0 ? rc : 1))
fi

array="0-$((count - 1))${LSJOB_THROTTLE:+%$LSJOB_THROTTLE}"
# sweep.sbatch logs to logs/ under the submit directory; Slurm does not create it and a task
# whose log cannot be opened fails without a word.
mkdir -p logs
job=$(sbatch --parsable --array="$array" ${sbatch_options[@]+"${sbatch_options[@]}"} "$here/sweep.sbatch" "$spec" \
  ${lsjob_options[@]+"${lsjob_options[@]}"})
job=${job%%;*}
echo "submit.sh: array job $job, $count point(s) of $spec; logs: logs/lsjob-sweep_${job}_<index>.out" >&2
echo "$job"
