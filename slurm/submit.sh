#!/usr/bin/env bash
# Submit every point of a sweep spec as a Slurm array job; prints the array's job id. A sweep
# with more points than the cluster's MaxArraySize goes in as several arrays: one id a line.
#
#   slurm/submit.sh SPEC [sbatch options...] [-- lsjob run options...]
#   e.g. slurm/submit.sh specs/x.yaml --partition=gpu -- --set train.epochs=30
#
# lsjob options after `--` reach every task; the count is taken with the same --set options,
# so one the tasks would refuse is refused here, before anything is queued.
# Run it from the directory the logs (logs/) and, by default, the results (results/) go under,
# or name that directory with sbatch's -D (--chdir).
# The tasks read a copy of SPEC made at submission (logs/<spec name>.<random>.yaml, in the job's
# working directory), the one counted: editing SPEC while tasks wait or requeue cannot shift the
# points under them.
# LSJOB_THROTTLE=K runs at most K points at once (sbatch --array=...%K, and each array after
# the first waits for the one before to end: --dependency=afterany). The jobs' own settings
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
    --force) ;;
    --index | --index=* | --index-offset | --index-offset=*)
      # Every task would train that one point: the rest find it taken (exit 5), then complete.
      echo "submit.sh: ${lsjob_options[i]} after -- would reach every task, and each would train the same point;" \
        "each task trains the point of its array index: to run some points only, give sbatch --array=3,7" \
        "(before the --); nothing submitted" >&2
      exit 2
      ;;
    *)
      echo "submit.sh: '${lsjob_options[i]}' after -- is not an option of lsjob run that every task can take" \
        "(--set KEY=VALUE, --force); nothing submitted" >&2
      exit 2
      ;;
  esac
done
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" > /dev/null && pwd) # cd prints the folder where CDPATH is set
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
# sweep.sbatch logs to logs/ under the job's working directory (this one, or -D's; and so do an
# --output or --error given here, in their own folders); Slurm does not create them and a task
# whose log cannot be opened fails without a word.
logs=() named='' cluster='' dependency='' own_array='' workdir=''
for ((i = 0; i < ${#sbatch_options[@]}; i++)); do
  case ${sbatch_options[i]} in
    -o | --output | -e | --error) logs+=("${sbatch_options[i + 1]:-}") ;;
    --output=* | --error=*) logs+=("${sbatch_options[i]#*=}") ;;
    -o?* | -e?*) logs+=("${sbatch_options[i]:2}") ;;
    -J | --job-name | --job-name=* | -J?*) named=1 ;;
    # The cluster sbatch submits to: its MaxArraySize, and where queued arrays are cancelled.
    -M | --clusters) cluster=${sbatch_options[i + 1]:-} ;;
    --clusters=*) cluster=${sbatch_options[i]#*=} ;;
    -M?*) cluster=${sbatch_options[i]:2} ;;
    # sbatch keeps the last --dependency: a later array's afterany must carry the user's too.
    -d | --dependency) dependency=${sbatch_options[i + 1]:-} ;;
    --dependency=*) dependency=${sbatch_options[i]#*=} ;;
    -d?*) dependency=${sbatch_options[i]:2} ;;
    -a | --array | --array=* | -a?*) own_array=1 ;;
    -D | --chdir) workdir=${sbatch_options[i + 1]:-} ;;
    --chdir=*) workdir=${sbatch_options[i]#*=} ;;
    -D?*) workdir=${sbatch_options[i]:2} ;;
  esac
done
# A relative log path is the job's: under its working directory.
in_workdir() { if [[ $1 == /* || -z $workdir ]]; then echo "$1"; else echo "$workdir/$1"; fi; }
if [[ -n ${LSJOB_THROTTLE:-} && ! $LSJOB_THROTTLE =~ ^[1-9][0-9]*$ ]]; then
  echo "submit.sh: LSJOB_THROTTLE=$LSJOB_THROTTLE is not a number of tasks (1 or more); nothing submitted" >&2
  exit 2
fi
for log in ${logs[@]+"${logs[@]}"}; do
  if [[ $(dirname -- "$log") == *%* ]]; then
    echo "submit.sh: the folder of your --output/--error $log holds a % pattern, which names it after the job" \
      "or task: Slurm makes no folders, and this one cannot be made before the job has its id, so every task" \
      "would fail without a log; keep the pattern in the file name (e.g. logs/x_%A_%a.out); nothing submitted" >&2
    exit 2
  fi
done
mkdir -p "$(in_workdir logs)"
for log in ${logs[@]+"${logs[@]}"}; do
  mkdir -p -- "$(dirname -- "$(in_workdir "$log")")"
done
rc=0
count=$(lsjob sweep count "$spec" ${sets[@]+"${sets[@]}"}) || rc=$?
if ((rc != 0)) || ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
  echo "submit.sh: cannot count the points of $spec (lsjob sweep count: exit $rc, output '${count:-}'); nothing submitted" >&2
  exit $((rc != 0 ? rc : 1))
fi
# Slurm refuses an array index of MaxArraySize or more (1001 by default): a larger sweep goes in
# as several arrays of at most that many tasks, each told by --index-offset where its points
# start. With LSJOB_THROTTLE each waits for the one before, so that at most K run in all.
# SchedulerParameters=max_array_tasks=N caps the tasks of one array below that. A controller
# that does not answer (in 30 s) or a list of clusters (-M a,b) leaves them unread.
where_to=()
[[ -n $cluster ]] && where_to=(-M "$cluster")
config=$(timeout 30 scontrol ${where_to[@]+"${where_to[@]}"} show config 2> /dev/null) || config=''
max=$(sed -n 's/^MaxArraySize *= *\([0-9][0-9]*\).*/\1/p' <<< "$config")
tasks=$(sed -n 's/^SchedulerParameters *=.*max_array_tasks=\([0-9][0-9]*\).*/\1/p' <<< "$config")
max=${max:-$count} # not read: one array, and sbatch says if the cluster takes none so large
if [[ -n $tasks ]] && ((tasks > 0 && tasks < max)); then max=$tasks; fi
if ((max == 0)); then
  echo "submit.sh: this cluster takes no array jobs (MaxArraySize = 0); run each point with" \
    "sbatch $here/train.sbatch $spec --index I, I in 0..$((count - 1)); nothing submitted" >&2
  exit 2
fi
if ((count > max)) && [[ -n $own_array ]]; then
  echo "submit.sh: $spec has $count points, more than one array may hold here ($max), and your --array would" \
    "apply to each of the arrays it needs; leave --array out, or submit the points yourself:" \
    "sbatch --array=... $here/sweep.sbatch SPEC --index-offset K (task i trains point K+i); nothing submitted" >&2
  exit 2
fi
if [[ -n $own_array && -n ${LSJOB_THROTTLE:-} ]]; then
  echo "submit.sh: your --array replaces the one LSJOB_THROTTLE=$LSJOB_THROTTLE would limit; end yours with" \
    "%$LSJOB_THROTTLE instead (e.g. --array=3,7%$LSJOB_THROTTLE) and unset LSJOB_THROTTLE; nothing submitted" >&2
  exit 2
fi
if ((count > max)) && [[ -n ${LSJOB_THROTTLE:-} && $dependency == *'?'* ]]; then
  echo "submit.sh: --dependency=$dependency (any of, '?') cannot be joined with the afterany that chains" \
    "LSJOB_THROTTLE's arrays; give the dependency with ',' or leave LSJOB_THROTTLE unset; nothing submitted" >&2
  exit 2
fi
# The count is the array's size, so the tasks, which read their spec hours later and again at
# each requeue, read a copy of the spec just counted, not a file that may be edited meanwhile.
# Under the job's working directory, as its logs: a container there (Pyxis) mounts that one.
name=$(basename -- "$spec")
snapshot=$(mktemp "$(cd -- "$(in_workdir logs)" > /dev/null && pwd)/${name%.*}.XXXXXX.yaml")
cp -- "$spec" "$snapshot"
chmod a-w -- "$snapshot"

jobs=() ranges=() job='' pin=() stop=''
# All or nothing: a sweep half queued would look whole to whoever resubmits it.
undo() { # $1: what went wrong, $2: the exit status
  trap - INT TERM HUP
  if ((${#jobs[@]} > 0)) && ! scancel ${pin[@]+"${pin[@]}"} "${jobs[@]}"; then
    # They may yet run, and read the spec's copy: it stays.
    echo "submit.sh: $1, and the arrays already queued (${jobs[*]}) could not be cancelled:" \
      "scancel ${pin[*]:+${pin[*]} }${jobs[*]}" >&2
    exit "$2"
  fi
  rm -f -- "$snapshot"
  echo "submit.sh: $1; ${jobs[*]:+the arrays already queued (${jobs[*]}) are cancelled; }nothing submitted" >&2
  exit "$2"
}
# Also when interrupted (Ctrl-C, a lost ssh session): bash runs the trap once the sbatch under
# way has ended, so its id is read, then undo cancels everything queued.
trap 'stop=1' INT TERM HUP
for ((offset = 0; offset < count; offset += max)); do
  size=$((count - offset < max ? count - offset : max))
  span="points $offset..$((offset + size - 1))"
  ((size > 1)) || span="point $offset"
  shifted=() after=()
  ((offset > 0)) && shifted=(--index-offset "$offset")
  # After the user's options, since sbatch keeps the last --dependency and -M: a later array
  # waits for the one before and for the user's dependency, on the cluster the first went to.
  [[ -n ${LSJOB_THROTTLE:-} && -n $job ]] && after=(--dependency="afterany:$job${dependency:+,$dependency}")
  after+=(${pin[@]+"${pin[@]}"})
  array=(--array="0-$((size - 1))${LSJOB_THROTTLE:+%$LSJOB_THROTTLE}")
  [[ -z $own_array ]] || array=() # one array (refused above otherwise), of the points yours names
  rc=0
  out=$(sbatch --parsable ${array[@]+"${array[@]}"} \
    ${sbatch_options[@]+"${sbatch_options[@]}"} ${after[@]+"${after[@]}"} "$here/sweep.sbatch" "$snapshot" \
    ${shifted[@]+"${shifted[@]}"} ${lsjob_options[@]+"${lsjob_options[@]}"}) || rc=$?
  if ((rc == 0)); then
    job=${out%%;*}
    jobs+=("$job") ranges+=("$job: $span")
    # With -M, --parsable prints "id;cluster": the later arrays go there, and are cancelled there.
    [[ -n $cluster && $out == *';'* ]] && pin=(-M "${out#*;}")
  fi
  [[ -z $stop ]] || undo "interrupted" 130 # a Ctrl-C reaches sbatch too: not a refusal
  ((rc == 0)) || undo "sbatch refused $span" "$rc"
done
trap - INT TERM HUP
where="$(in_workdir logs)/lsjob-sweep_<array id>_<task>.out"
[[ ${#logs[@]} -eq 0 && -z $named ]] || where="as your --output/--error/--job-name say"
if ((${#jobs[@]} == 1)); then
  where=${where/<array id>_<task>/${job}_<index>}
  points="$count point(s)"
  [[ -z $own_array ]] || points="the points your --array names, of the $count"
  echo "submit.sh: array job $job, $points of $spec (the tasks read ${snapshot#"$PWD"/}); logs: $where" >&2
else
  ranges_text=$(printf '%s, ' "${ranges[@]}")
  echo "submit.sh: ${#jobs[@]} array jobs (at most $max tasks an array here), $count points of $spec: ${ranges_text%, }" \
    "(the tasks read ${snapshot#"$PWD"/}); logs: $where (tasks count from 0 in each array)" >&2
fi
printf '%s\n' "${jobs[@]}"
