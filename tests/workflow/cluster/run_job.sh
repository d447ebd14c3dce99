#!/bin/sh
# The job side of submit.sh: runs in the job's folder DIR with a clean environment.
# Writes DIR/pid (this process), DIR/env (the environment the job saw), runs the job
# script, then writes DIR/exit (its exit status).
dir=$1
echo $$ > "$dir/pid"
env > "$dir/env"
/bin/sh "$dir/jobscript.sh"
status=$?
echo "$status" > "$dir/exit"
exit "$status"
