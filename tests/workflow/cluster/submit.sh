#!/bin/sh
# A local stand-in for a batch scheduler's submit command (sbatch, qsub, bsub), for
# Snakemake's generic cluster executor:
#
#   snakemake --executor cluster-generic \
#     --cluster-generic-submit-cmd "sh tests/workflow/cluster/submit.sh STATE_DIR {rule}"
#
# Snakemake appends the job script's path. Like a real scheduler, this script
#   - copies the job script into the job's own folder STATE_DIR/jobs/<id>/,
#   - starts it as a detached process (own session, stdin/stdout/stderr not inherited)
#     with a clean environment: only PATH, HOME and LANG, nothing from the submitting
#     shell, so the job can depend on nothing but the shared file system,
#   - records the submission (job id, rule) in STATE_DIR/submissions.tsv,
#   - prints the job id and returns at once.
# run_job.sh records, for each job, its pid, its environment and its exit status.
set -eu
state=$1
rule=$2
jobscript=$3
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$state/jobs"
dir=$(mktemp -d "$state/jobs/job.XXXXXXXX")   # unique job id = folder name
id=${dir##*/}
cp "$jobscript" "$dir/jobscript.sh"
printf '%s\t%s\n' "$id" "$rule" >> "$state/submissions.tsv"

setsid /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$dir" LANG=C.UTF-8 \
    /bin/sh "$here/run_job.sh" "$dir" </dev/null >"$dir/stdout" 2>"$dir/stderr" &

echo "$id"
