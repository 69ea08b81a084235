#!/usr/bin/env bash
# A one-node SLURM for the `slurm` test tier: two fake GPU devices, no accounting. It writes
# /etc/slurm/slurm.conf and gres.conf (meant for CI machines and throwaway boxes).
#   tests/slurm/cluster.sh install   apt packages (slurm-wlm, munge)
#   tests/slurm/cluster.sh start DIR state, config and logs under DIR; prints the env to export
#   tests/slurm/cluster.sh stop DIR  stops the daemons by their pid files
set -euo pipefail
cmd=${1:?install|start|stop}

if [ "$cmd" = install ]; then
  # Every command the tier runs, not one: a box with a half-removed SLURM gets it back.
  for c in slurmctld slurmd sinfo scontrol squeue sbatch scancel sacct munged; do
    if ! command -v "$c" >/dev/null && [ ! -x "/usr/sbin/$c" ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
        slurm-wlm slurm-client slurmctld slurmd munge >/dev/null
      break
    fi
  done
  exit 0
fi

dir=$(realpath -m "${2:?state folder}")
host=$(hostname -s)

if [ "$cmd" = stop ]; then
  pids=()
  for d in slurmd slurmctld munged; do
    pidf="$dir/$d.pid"
    if [ -f "$pidf" ]; then pids+=("$(cat "$pidf")"); kill "${pids[-1]}" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 30); do  # wait until they are gone, so a new cluster can bind the ports
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  exit 0
fi

mkdir -p "$dir"/{spool/ctld,spool/d,log,dev,munge}
chmod 755 "$dir"
for i in 0 1; do [ -e "$dir/dev/nvidia$i" ] || mknod -m 666 "$dir/dev/nvidia$i" c 1 3; done
grep -q " $host\$" /etc/hosts || echo "127.0.0.1 $host" >> /etc/hosts
cpus=$(nproc)
cat > "$dir/slurm.conf" <<CONF
ClusterName=pathreplay-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmUser=root
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$host Name=gpu File=$dir/dev/nvidia[0-1]" > "$dir/gres.conf"
# Job steps (srun inside a job) read the default path, not the submitter's SLURM_CONF.
mkdir -p /etc/slurm
cp "$dir/slurm.conf" "$dir/gres.conf" /etc/slurm/
export SLURM_CONF=/etc/slurm/slurm.conf

# munged: Debian's package made /etc/munge/munge.key; run it as the munge user.
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged --pid-file="$dir/munge/munged.pid" 2>/dev/null \
    || runuser -u munge -- /usr/sbin/munged
fi
[ -f "$dir/munge/munged.pid" ] && cp "$dir/munge/munged.pid" "$dir/munged.pid" || pgrep -x munged > "$dir/munged.pid"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed"; then break; fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
sinfo -h -o "%P %T %G" >&2
echo "export SLURM_CONF=$SLURM_CONF"
