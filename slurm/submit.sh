#!/usr/bin/env bash
# Submit every point of a sweep spec as one Slurm array job; prints the array's job id.
#
#   slurm/submit.sh SPEC [sbatch options...] [-- lsjob run options...]
#   e.g. slurm/submit.sh specs/x.yaml --partition=gpu -- --set train.epochs=30
#
# lsjob options after `--` reach every task; the count is taken with the same --set options,
# so one the tasks would refuse is refused here, before anything is queued.
# Run it from the directory the logs (logs/) and, by default, the results (results/) go under.
# The tasks read a copy of SPEC made at submission (logs/<spec name>.<random>.yaml), the one
# counted: editing SPEC while tasks wait or requeue cannot shift the points under them.
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
if [[ -n ${LSJOB_OUTPUT_ROOT:-} && -z ${LSJOB_RESULTS:-} ]]; then
  # Every task would refuse it (sweep.sbatch): refused here, before anything is queued.
  echo "submit.sh: LSJOB_OUTPUT_ROOT=$LSJOB_OUTPUT_ROOT is set but LSJOB_RESULTS is not; set LSJOB_RESULTS to the" \
    "folder that lsjob sees at $LSJOB_OUTPUT_ROOT (the one bound there), or unset LSJOB_OUTPUT_ROOT; nothing submitted" >&2
  exit 2
fi

if [[ -n ${LSJOB_VENV:-} ]]; then
  # shellcheck disable=SC1091  # the user's venv, not known here
  source "$LSJOB_VENV/bin/activate"
fi
# sweep.sbatch logs to logs/ under the submit directory (and so do an --output or --error given
# here, in their own folders); Slurm does not create them and a task whose log cannot be opened
# fails without a word.
logs=() named=''
for ((i = 0; i < ${#sbatch_options[@]}; i++)); do
  case ${sbatch_options[i]} in
    -o | --output | -e | --error) logs+=("${sbatch_options[i + 1]:-}") ;;
    --output=* | --error=*) logs+=("${sbatch_options[i]#*=}") ;;
    -o?* | -e?*) logs+=("${sbatch_options[i]:2}") ;;
    -J | --job-name | --job-name=* | -J?*) named=1 ;;
  esac
done
mkdir -p logs
for log in ${logs[@]+"${logs[@]}"}; do
  folder=$(dirname -- "$log")
  [[ $folder == *%* ]] || mkdir -p -- "$folder" # a folder named by job id cannot be made before
done
rc=0
count=$(lsjob sweep count "$spec" ${sets[@]+"${sets[@]}"}) || rc=$?
if ((rc != 0)) || ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
  echo "submit.sh: cannot count the points of $spec (lsjob sweep count: exit $rc, output '${count:-}'); nothing submitted" >&2
  exit $((rc != 0 ? rc : 1))
fi
# The count is the array's size, so the tasks, which read their spec hours later and again at
# each requeue, read a copy of the spec just counted, not a file that may be edited meanwhile.
name=$(basename -- "$spec")
snapshot=$(mktemp "$PWD/logs/${name%.*}.XXXXXX.yaml")
cp -- "$spec" "$snapshot"
chmod a-w -- "$snapshot"

array="0-$((count - 1))${LSJOB_THROTTLE:+%$LSJOB_THROTTLE}"
rc=0
job=$(sbatch --parsable --array="$array" ${sbatch_options[@]+"${sbatch_options[@]}"} "$here/sweep.sbatch" "$snapshot" \
  ${lsjob_options[@]+"${lsjob_options[@]}"}) || rc=$?
if ((rc != 0)); then
  rm -f -- "$snapshot"
  exit "$rc"
fi
job=${job%%;*}
where="logs/lsjob-sweep_${job}_<index>.out"
[[ ${#logs[@]} -eq 0 && -z $named ]] || where="as your --output/--error/--job-name say"
echo "submit.sh: array job $job, $count point(s) of $spec (the tasks read ${snapshot#"$PWD"/}); logs: $where" >&2
echo "$job"
