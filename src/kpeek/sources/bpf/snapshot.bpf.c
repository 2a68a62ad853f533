// SPDX-License-Identifier: GPL-2.0
/* kpeek's snapshot: one record per task (iter/task) and one per open
 * descriptor (iter/task_file), in fixed binary layouts that snapshot.py
 * unpacks. All field access is CO-RE against the hand-kept vmlinux.h, and
 * one compiled object loads on every supported kernel (5.14 and later):
 * fields and helpers that only some kernels have (task_struct.blocker,
 * __state vs state, file.f_count vs f_ref, se.sched_delayed, bpf_loop) are
 * probed with bpf_core_field_exists / bpf_core_enum_value_exists, and the
 * record says what was there (has_blocker, has_stack).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_STACK_DEPTH 64
#define PATH_BUF 4096
#define SCRATCH 8192
#define TEXT_AT 512   /* stack text after the MAX_STACK_DEPTH return addresses */
#define TEXT_MAX 4096
#define FRAME_MAX 192
#define WCHAN_AT (TEXT_AT + TEXT_MAX)
#define WCHAN_MAX 64
#define MAX_PID_LEVEL 32
#define TASK_WAKING 0x0200

/* Set by userspace before each run (the .bss map). */
struct kpeek_snapshot_args {
	__u32 filter_tgids; /* only tasks whose tgid is in `wanted` */
	__u32 leaders_only; /* skip threads (pid != tgid) */
	__u32 stacks;       /* collect kernel stacks: 1 all, 2 only of tasks in D state */
	__u32 paths;        /* resolve paths with bpf_d_path */
	__u32 generation;   /* differs for every run: marks files already seen */
	__u32 pad;
};

struct kpeek_snapshot_args snap_args = {};

/* Entries made as they are added: a preallocated map of 65,536 cost every
 * kpeek ps 2 ms, for the few pids it usually holds. */
#define BPF_F_NO_PREALLOC (1U << 0)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u8);
} wanted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[SCRATCH]);
} scratch SEC(".maps");

/* struct file address -> generation of the run that last emitted its path:
 * a file shared by many descriptors has its path resolved once per run. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, __u64);
	__type(value, __u32);
} seen_files SEC(".maps");

#define PATH_SEEN (-2) /* path_len: same file as an earlier record of this run */

/* snapshot_files' path buffer. Userspace runs the task, descriptor and
 * memory-map walks at once, each in a thread of its own, and an iterator
 * program may be preempted on its CPU by another: no two of them write to
 * one per-CPU buffer (the task walk's stacks use `scratch`). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PATH_BUF]);
} file_paths SEC(".maps");

/* Older kernels, and newer ones, seen through CO-RE "flavors". */
struct task_struct___blocker {
	unsigned long blocker;
} __attribute__((preserve_access_index));

/* 6.12+: a task that blocked may stay on its runqueue a while ("delayed
 * dequeue"); it is still blocked. */
struct sched_entity___delayed {
	unsigned char sched_delayed;
} __attribute__((preserve_access_index));

struct task_struct___delayed {
	struct sched_entity___delayed se;
} __attribute__((preserve_access_index));

struct file___f_count {
	atomic_long_t f_count;
} __attribute__((preserve_access_index));

/* 6.13+: file_ref_t (a typedef of this anonymous struct) */
struct file___f_ref {
	struct {
		atomic_long_t refcnt;
	} f_ref;
} __attribute__((preserve_access_index));

/* Before 5.16 the CPU was task_struct.cpu, not thread_info.cpu. */
struct task_struct___cpu {
	unsigned int cpu;
} __attribute__((preserve_access_index));

/* Before 5.14 the state was a long named "state". */
struct task_struct___state {
	long state;
} __attribute__((preserve_access_index));

struct kpeek_task_rec {
	__u64 address;
	__u64 blocker;
	__u64 start_boottime;
	__u32 pid, tgid, ppid, pgid, sid;
	__u32 ns_pid, ns_tgid, ns_ppid, ns_pgid, ns_sid;
	__u32 pidns;
	__u32 state, exit_state;
	__u32 uid, euid;
	__u32 flags;
	__u32 ns_mnt, ns_net, ns_ipc, ns_uts, ns_user, ns_cgroup, ns_time;
	__u32 has_blocker;
	/* The system call a sleeping task is in, from its saved user registers
	 * (as /proc/PID/syscall reads them); nr -1: none, or not known. */
	__s64 syscall_nr;
	__u64 syscall_args[6];
	__u64 exec_start; /* se.exec_start: the scheduler clock (ns) when it last ran */
	__u32 cpu;        /* the CPU it last ran on */
	__u32 tracer;     /* tgid of its tracer (ptrace), 0 when not traced */
	__u32 has_syscall; /* bpf_task_pt_regs (5.15+) and x86-64 pt_regs are there */
	__u32 has_cpu;
	char comm[16];
	char wchan[WCHAN_MAX]; /* as /proc/PID/wchan shows it (%ps), "" for none */
	__s32 stack_bytes; /* length of the stack text that follows, "%pB\n" a frame */
	__u32 has_stack;   /* the kernel has the helpers that read stacks and wchan */
};

/* The task record being built (see snapshot_tasks). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kpeek_task_rec);
} task_rec SEC(".maps");

struct kpeek_file_rec {
	__u32 tgid, fd;
	__u64 file, inode;
	__u64 pos, size, refcount, ino;
	__u32 f_mode, f_flags;
	__u32 dev, rdev;
	__u32 nlink, i_mode;
	__u32 mnt_id, cloexec;
	__s32 path_len;
	__u32 pid;
	/* i_flctx is set: a lock was taken on the inode since it was read in.
	 * Only such inodes can be in /proc/locks, whose first read in a process
	 * waits an RCU grace period (percpu_down_write), about 15 ms. */
	__u32 lock_context;
	__u32 pad;
};

static __always_inline int wanted_tgid(__u32 tgid)
{
	if (!snap_args.filter_tgids)
		return 1;
	return bpf_map_lookup_elem(&wanted, &tgid) != NULL;
}

/* The number of `pid` in the namespace at `level` whose identity is `ns`
 * (pid_nr_ns): 0 when pid is not visible there. */
static __always_inline __u32 nr_in_ns(struct pid *pid, __u32 level, struct pid_namespace *ns)
{
	struct upid upid = {};

	if (!pid || BPF_CORE_READ(pid, level) < level)
		return 0;
	if (bpf_probe_read_kernel(&upid, sizeof(upid), &pid->numbers[level & (MAX_PID_LEVEL - 1)]))
		return 0;
	return upid.ns == ns ? upid.nr : 0;
}

static __always_inline __u32 global_nr(struct pid *pid)
{
	return pid ? BPF_CORE_READ(pid, numbers[0].nr) : 0;
}

struct stack_walk {
	long nbytes;        /* of return addresses at the start of scratch */
	__u32 off;          /* of stack text written so far */
	__u32 want_wchan;
	__u32 got_wchan;
	__u32 stacks;
};

/* One frame (bpf_loop callback: the verifier checks it once, not 64 times). */
static long stack_frame(__u32 i, void *data)
{
	static const char frame_fmt[] = "%pB\n";
	static const char wchan_fmt[] = "%ps";
	struct stack_walk *walk = data;
	__u32 zero = 0;
	char *buf;
	__u64 ip, idx = i;
	long w;

	buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf || i >= MAX_STACK_DEPTH || (long)i * 8 >= walk->nbytes)
		return 1;
	/* Masked behind a barrier (clang would drop a mask it can prove
	 * redundant): 6.1's verifier loses the bound checked above on the
	 * zero-extended copy of i. */
	barrier_var(idx);
	ip = ((__u64 *)buf)[idx & (MAX_STACK_DEPTH - 1)];
	/* bpf_get_task_stack (stack_trace_save_tsk) already leaves out scheduler
	 * and lock code, as get_wchan() does: the first frame is the wchan. */
	if (walk->want_wchan) {
		bpf_snprintf(buf + WCHAN_AT, WCHAN_MAX, wchan_fmt, &ip, sizeof(ip));
		walk->want_wchan = 0;
		walk->got_wchan = 1;
	}
	if (!walk->stacks)
		return walk->want_wchan ? 0 : 1;
	if (walk->off > TEXT_MAX - FRAME_MAX)
		return 1;
	w = bpf_snprintf(buf + TEXT_AT + (walk->off & (TEXT_MAX - 1)), FRAME_MAX, frame_fmt, &ip,
			 sizeof(ip));
	if (w <= 1)
		return 1;
	walk->off += (w > FRAME_MAX ? FRAME_MAX : w) - 1; /* w counts the NUL */
	return 0;
}

/* Fill rec->wchan as get_wchan() would (a blocked task's first return
 * address outside scheduler and lock code) and, with `stacks`, write the
 * stack as /proc/PID/stack prints it ("%pB" a frame) into the scratch
 * buffer's text area. Returns the text length; *bufp is the scratch buffer
 * (NULL when no text was written there). */
static __always_inline int collect_stack(struct task_struct *task, struct kpeek_task_rec *rec,
					 int stacks, char **bufp)
{
	struct stack_walk walk = {};
	__u32 zero = 0;
	char *buf;

	*bufp = NULL;
	walk.stacks = stacks;
	/* bpf_loop (5.17+) walks the frames and bpf_snprintf (5.13+) formats
	 * them: without either, no stack and no wchan (rec->has_stack 0). */
	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_loop) ||
	    !bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_snprintf))
		return 0;
	rec->has_stack = 1;
	walk.want_wchan = rec->state != 0 && rec->state != TASK_WAKING &&
			  rec->pid != (__u32)bpf_get_current_pid_tgid();
	if (walk.want_wchan && BPF_CORE_READ(task, on_rq)) {
		struct task_struct___delayed *td = (void *)task;

		walk.want_wchan = bpf_core_field_exists(td->se.sched_delayed) &&
				  BPF_CORE_READ(td, se.sched_delayed);
	}
	if (!stacks && !walk.want_wchan)
		return 0;
	buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return 0;
	walk.nbytes = bpf_get_task_stack(task, buf, MAX_STACK_DEPTH * 8, 0);
	if (walk.nbytes <= 0)
		return 0;
	bpf_loop(MAX_STACK_DEPTH, stack_frame, &walk, 0);
	if (walk.got_wchan)
		__builtin_memcpy(rec->wchan, buf + WCHAN_AT, WCHAN_MAX);
	*bufp = stacks ? buf : NULL;
	return walk.off;
}

#define PF_KTHREAD 0x00200000
#define STACKS_OF_BLOCKED 2
#define TASK_UNINTERRUPTIBLE 0x0002
#define BLOCKED_MASK 0x0402 /* TASK_UNINTERRUPTIBLE | TASK_NOLOAD: an idle kthread is not D */

/* What /proc/PID/syscall and the sched and status files tell of a task:
 * the system call it sleeps in with its arguments (x86-64: orig_ax, then
 * di, si, dx, r10, r8, r9), when it last ran and where, and its tracer. */
static __always_inline void syscall_and_sched(struct task_struct *task,
					      struct kpeek_task_rec *rec)
{
	struct task_struct___cpu *old = (void *)task;
	struct pt_regs *regs = NULL;

	rec->syscall_nr = -1;
	rec->exec_start = BPF_CORE_READ(task, se.exec_start);
	if (bpf_core_field_exists(task->thread_info.cpu)) {
		rec->cpu = BPF_CORE_READ(task, thread_info.cpu);
		rec->has_cpu = 1;
	} else if (bpf_core_field_exists(old->cpu)) {
		rec->cpu = BPF_CORE_READ(old, cpu);
		rec->has_cpu = 1;
	}
	if (BPF_CORE_READ(task, ptrace))
		rec->tracer = BPF_CORE_READ(task, parent, tgid);
	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs) ||
	    !bpf_core_field_exists(regs->orig_ax))
		return;
	rec->has_syscall = 1;
	/* Like /proc: a running task's registers are changing (it says
	 * "running"), a kernel thread has no user registers, a zombie no stack. */
	if (rec->state == 0 || rec->exit_state || (rec->flags & PF_KTHREAD) ||
	    rec->pid == (__u32)bpf_get_current_pid_tgid())
		return;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return;
	rec->syscall_nr = (long)BPF_CORE_READ(regs, orig_ax);
	if (rec->syscall_nr < 0) {
		rec->syscall_nr = -1;
		return;
	}
	rec->syscall_args[0] = BPF_CORE_READ(regs, di);
	rec->syscall_args[1] = BPF_CORE_READ(regs, si);
	rec->syscall_args[2] = BPF_CORE_READ(regs, dx);
	rec->syscall_args[3] = BPF_CORE_READ(regs, r10);
	rec->syscall_args[4] = BPF_CORE_READ(regs, r8);
	rec->syscall_args[5] = BPF_CORE_READ(regs, r9);
}

SEC("iter/task")
int snapshot_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct kpeek_task_rec *rec;
	__u32 zero = 0;
	struct pid *pid, *tgid_pid, *pgrp, *session, *parent_tgid;
	struct pid_namespace *ns;
	struct nsproxy *nsp;
	__u32 level;
	char *buf;

	if (!task)
		return 0;
	/* In a map, not on the BPF stack: with the bpf_loop callback's frame it
	 * would pass the 512 bytes 6.1's verifier allows for both together. */
	rec = bpf_map_lookup_elem(&task_rec, &zero);
	if (!rec)
		return 0;
	__builtin_memset(rec, 0, sizeof(*rec));
	rec->pid = BPF_CORE_READ(task, pid);
	rec->tgid = BPF_CORE_READ(task, tgid);
	if (snap_args.leaders_only && rec->pid != rec->tgid)
		return 0;
	if (!wanted_tgid(rec->tgid))
		return 0;

	rec->address = (__u64)task;
	rec->start_boottime = BPF_CORE_READ(task, start_boottime);
	if (bpf_core_field_exists(task->__state)) {
		rec->state = BPF_CORE_READ(task, __state);
	} else {
		struct task_struct___state *old = (void *)task;

		rec->state = BPF_CORE_READ(old, state);
	}
	rec->exit_state = BPF_CORE_READ(task, exit_state);
	rec->flags = BPF_CORE_READ(task, flags);
	rec->uid = BPF_CORE_READ(task, real_cred, uid.val);
	rec->euid = BPF_CORE_READ(task, real_cred, euid.val);
	rec->ppid = BPF_CORE_READ(task, real_parent, tgid);
	BPF_CORE_READ_INTO(&rec->comm, task, comm);

	struct task_struct___blocker *tb = (void *)task;
	if (bpf_core_field_exists(tb->blocker)) {
		rec->has_blocker = 1;
		rec->blocker = BPF_CORE_READ(tb, blocker);
	}

	pid = BPF_CORE_READ(task, thread_pid);
	tgid_pid = BPF_CORE_READ(task, signal, pids[PIDTYPE_TGID]);
	pgrp = BPF_CORE_READ(task, signal, pids[PIDTYPE_PGID]);
	session = BPF_CORE_READ(task, signal, pids[PIDTYPE_SID]);
	parent_tgid = BPF_CORE_READ(task, real_parent, signal, pids[PIDTYPE_TGID]);
	rec->pgid = global_nr(pgrp);
	rec->sid = global_nr(session);

	if (pid) {
		struct upid own = {};

		level = BPF_CORE_READ(pid, level) & (MAX_PID_LEVEL - 1);
		bpf_probe_read_kernel(&own, sizeof(own), &pid->numbers[level]);
		ns = own.ns;
		rec->ns_pid = own.nr;
		rec->pidns = BPF_CORE_READ(ns, ns.inum);
		rec->ns_tgid = nr_in_ns(tgid_pid, level, ns);
		rec->ns_pgid = nr_in_ns(pgrp, level, ns);
		rec->ns_sid = nr_in_ns(session, level, ns);
		rec->ns_ppid = nr_in_ns(parent_tgid, level, ns);
	}

	nsp = BPF_CORE_READ(task, nsproxy);
	if (nsp) {
		rec->ns_mnt = BPF_CORE_READ(nsp, mnt_ns, ns.inum);
		rec->ns_net = BPF_CORE_READ(nsp, net_ns, ns.inum);
		rec->ns_ipc = BPF_CORE_READ(nsp, ipc_ns, ns.inum);
		rec->ns_uts = BPF_CORE_READ(nsp, uts_ns, ns.inum);
		rec->ns_cgroup = BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
		rec->ns_time = BPF_CORE_READ(nsp, time_ns, ns.inum);
	}
	rec->ns_user = BPF_CORE_READ(task, real_cred, user_ns, ns.inum);

	syscall_and_sched(task, rec);
	rec->stack_bytes = collect_stack(task, rec, snap_args.stacks == STACKS_OF_BLOCKED ?
					(rec->state & BLOCKED_MASK) == TASK_UNINTERRUPTIBLE :
					snap_args.stacks != 0, &buf);
	bpf_seq_write(seq, rec, sizeof(*rec));
	if (buf && rec->stack_bytes > 0)
		bpf_seq_write(seq, buf + TEXT_AT, rec->stack_bytes & (TEXT_MAX - 1));
	return 0;
}

SEC("iter/task_file")
int snapshot_files(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct kpeek_file_rec rec = {};
	struct inode *inode;
	struct vfsmount *vfsmnt;
	struct fdtable *fdt;
	unsigned long *cloexec_bits, word = 0;
	__u32 zero = 0;
	char *buf;

	if (!task || !file)
		return 0;
	rec.tgid = BPF_CORE_READ(task, tgid);
	rec.pid = BPF_CORE_READ(task, pid);
	/* /proc/PID/fd shows the leader's table; a thread with a table of its
	 * own (unshare(CLONE_FILES)) is not part of it. */
	if (rec.pid != rec.tgid || !wanted_tgid(rec.tgid))
		return 0;
	rec.fd = ctx->fd;
	rec.file = (__u64)file;
	rec.f_mode = BPF_CORE_READ(file, f_mode);
	rec.f_flags = BPF_CORE_READ(file, f_flags);
	rec.pos = BPF_CORE_READ(file, f_pos);

	struct file___f_ref *fr = (void *)file;
	struct file___f_count *fc = (void *)file;
	if (bpf_core_field_exists(fr->f_ref))
		rec.refcount = BPF_CORE_READ(fr, f_ref.refcnt.counter) + 1; /* file_ref_t: 0 is one ref */
	else if (bpf_core_field_exists(fc->f_count))
		rec.refcount = BPF_CORE_READ(fc, f_count.counter);

	inode = BPF_CORE_READ(file, f_inode);
	rec.inode = (__u64)inode;
	if (inode) {
		rec.ino = BPF_CORE_READ(inode, i_ino);
		rec.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		rec.rdev = BPF_CORE_READ(inode, i_rdev);
		rec.nlink = BPF_CORE_READ(inode, i_nlink);
		rec.i_mode = BPF_CORE_READ(inode, i_mode);
		rec.size = BPF_CORE_READ(inode, i_size);
		rec.lock_context = BPF_CORE_READ(inode, i_flctx) != NULL;
	}

	vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	if (vfsmnt) {
		struct mount *mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
		rec.mnt_id = BPF_CORE_READ(mnt, mnt_id);
	}

	fdt = BPF_CORE_READ(task, files, fdt);
	cloexec_bits = BPF_CORE_READ(fdt, close_on_exec);
	if (cloexec_bits) {
		bpf_probe_read_kernel(&word, sizeof(word), cloexec_bits + rec.fd / (8 * sizeof(long)));
		rec.cloexec = (word >> (rec.fd % (8 * sizeof(long)))) & 1;
	}

	rec.path_len = -1;
	buf = snap_args.paths ? bpf_map_lookup_elem(&file_paths, &zero) : NULL;
	if (buf) {
		__u32 gen = snap_args.generation, *last = bpf_map_lookup_elem(&seen_files, &rec.file);

		/* A record that did not fit the seq_file buffer is dropped and
		 * shown again first in the next one (count == 0): resolve its
		 * path again, the earlier copy never reached userspace. */
		if (last && *last == gen && BPF_CORE_READ(seq, count) != 0) {
			rec.path_len = PATH_SEEN;
			bpf_seq_write(seq, &rec, sizeof(rec));
			return 0;
		}
		bpf_map_update_elem(&seen_files, &rec.file, &gen, BPF_ANY);
		long n = bpf_d_path(&file->f_path, buf, PATH_BUF);
		if (n > 0 && n <= PATH_BUF)
			rec.path_len = n - 1; /* without the NUL */
	}
	bpf_seq_write(seq, &rec, sizeof(rec));
	if (buf && rec.path_len > 0)
		bpf_seq_write(seq, buf, rec.path_len & (PATH_BUF - 1));
	return 0;
}

/* 6.16+ with CONFIG_DETECT_HUNG_TASK_BLOCKER: who took a semaphore last. */
struct semaphore___last {
	unsigned long last_holder;
} __attribute__((preserve_access_index));

#define NO_FIELD 0xffffffffu
#define FIELD_AT(type, field) bpf_core_field_offset(type, field)
#define FIELD_IF(var, field) (bpf_core_field_exists(var->field) ? \
			      (__u32)bpf_core_field_offset(var->field) : NO_FIELD)

/* The offsets the doctor reads sleeping locks at (kernlocks.py), in the
 * order of LOCK_LAYOUT in sources/bpf/layout.py: relocated by libbpf for the
 * running kernel when this object loads, so no BTF is parsed in Python. */
struct kpeek_lock_layout {
	__u32 off[22];
};

SEC("iter/task")
int lock_layout(struct bpf_iter__task *ctx)
{
	struct task_struct___blocker *tb = NULL;
	struct semaphore___last *sl = NULL;
	struct task_struct *t = NULL;
	struct kpeek_lock_layout rec = {};

	if (!ctx->task || ctx->meta->seq_num)
		return 0; /* one record per run */
	rec.off[0] = FIELD_AT(struct task_struct, stack);
	rec.off[1] = FIELD_IF(tb, blocker);
	rec.off[2] = FIELD_IF(t, thread.sp);
	rec.off[3] = FIELD_AT(struct mutex, wait_list);
	rec.off[4] = FIELD_AT(struct rw_semaphore, wait_list);
	rec.off[5] = FIELD_AT(struct semaphore, wait_list);
	rec.off[6] = FIELD_AT(struct mutex_waiter, list);
	rec.off[7] = FIELD_AT(struct mutex_waiter, task);
	rec.off[8] = FIELD_AT(struct rwsem_waiter, list);
	rec.off[9] = FIELD_AT(struct rwsem_waiter, task);
	rec.off[10] = FIELD_AT(struct rwsem_waiter, timeout);
	rec.off[11] = FIELD_AT(struct semaphore_waiter, list);
	rec.off[12] = FIELD_AT(struct semaphore_waiter, task);
	rec.off[13] = FIELD_AT(struct rw_semaphore, owner);
	rec.off[14] = FIELD_AT(struct rw_semaphore, count);
	rec.off[15] = FIELD_AT(struct mutex, owner);
	rec.off[16] = FIELD_AT(struct semaphore, count);
	rec.off[17] = FIELD_IF(sl, last_holder);
	rec.off[18] = FIELD_AT(struct inode, i_rwsem);
	rec.off[19] = FIELD_AT(struct inode, i_ino);
	rec.off[20] = FIELD_AT(struct inode, i_sb);
	rec.off[21] = FIELD_AT(struct super_block, s_dev);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* lsof's rows without a descriptor. mem, each process's mapped files
 * (iter/task_vma: snapshot_maps), as /proc/PID/maps shows them; cwd, rtd
 * and txt (iter/task: snapshot_roots). No path is made here: a task's
 * fs_struct and its mm's exe_file are pinned by nothing an iterator holds
 * (exit_fs, chdir and exec free them under it), and bpf_d_path on them
 * crashed the kernel under fork/exit churn (a general protection fault in
 * d_path); a vma's file is no longer a trusted pointer on newer kernels
 * (the verifier refuses bpf_d_path on it: 6.18.44 here). So both programs
 * send, for each file, the (mount, dentry) pair and the inode's number and
 * device, read with fault-safe loads only and handed to no helper:
 * userspace reads each pair's path from /proc once (the link for cwd, rtd
 * and exe, /proc/PID/map_files/START-END for a mapping), and only where the
 * inode matches what it read. */
#define PF_CWD 0
#define PF_RTD 1
#define PF_TXT 2
#define PF_MEM 3
#define PF_TASK 4 /* a process was visited; flags: PF_HAS_MM */
#define PF_HAS_MM 1

struct kpeek_pfile_rec {
	__u32 tgid, kind;
	__u64 file;	/* mem: the mapped struct file (userspace keys paths by it) */
	__u64 ino;
	__u32 dev, f_mode;
	__s32 path_len; /* always -1 (no path); mem: PATH_SEEN, or a kpeek_mapped_at follows */
	__u32 flags;	/* PF_TASK: PF_HAS_MM */
};

/* What follows a mem record that is not PATH_SEEN: where its path is. */
struct kpeek_mapped_at {
	__u64 mount, dentry;	/* the file's f_path */
	__u64 start, end;	/* the vma: /proc/PID/map_files/START-END */
};

/* struct file address -> the run and process that last emitted it: a file
 * mapped by many vmas of one process is one row, and its path is sent once
 * per run however many processes map it. */
struct mapped_seen {
	__u32 generation, tgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, struct mapped_seen);
} seen_mapped SEC(".maps");

/* A named anonymous shared mapping shows as [anon_shmem:NAME] in maps
 * (6.2+). Before, anon_name (5.17+) shares a union with `shared`, the
 * i_mmap tree node of every file-backed vma: set there, it names nothing. */
struct vm_area_struct___anon_name {
	void *anon_name;
	struct {
		void *rb_parent_color;
	} shared;
} __attribute__((preserve_access_index));

static __always_inline bool named_anon_shmem(struct vm_area_struct___anon_name *vma)
{
	if (!bpf_core_field_exists(vma->anon_name))
		return false;
	if (bpf_core_field_exists(vma->shared) &&
	    bpf_core_field_offset(vma->anon_name) == bpf_core_field_offset(vma->shared))
		return false;
	return BPF_CORE_READ(vma, anon_name) != NULL;
}

/* cwd, rtd, txt: kpeek_pfile_rec with file = the dentry, f_mode = 0 and,
 * after it, the mount's address (8 bytes); no path. */
static __always_inline void emit_link(struct seq_file *seq, struct kpeek_pfile_rec *rec,
				      __u32 kind, struct vfsmount *mnt, struct dentry *dentry)
{
	__u64 mount = (__u64)mnt;

	if (!dentry || !mnt)
		return;
	rec->kind = kind;
	rec->file = (__u64)dentry;
	/* No branch on a NULL d_inode: a fault-safe read through it gives 0,
	 * and each branch here doubled what the verifier walks (3 calls). */
	rec->ino = BPF_CORE_READ(dentry, d_inode, i_ino);
	rec->dev = BPF_CORE_READ(dentry, d_inode, i_sb, s_dev);
	rec->path_len = -1;
	bpf_seq_write(seq, rec, sizeof(*rec));
	bpf_seq_write(seq, &mount, sizeof(mount));
}

SEC("iter/task")
int snapshot_roots(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct kpeek_pfile_rec rec = {};
	struct fs_struct *fs;
	struct mm_struct *mm;
	struct file *exe;

	if (!task)
		return 0;
	rec.tgid = task->tgid;
	if (task->pid != rec.tgid || !wanted_tgid(rec.tgid))
		return 0;
	/* Fault-safe reads: a freed fs_struct gives wrong numbers, never a
	 * crash. Probe reads, not typed loads (task->fs): for a typed load of
	 * a pointer field of a trusted task the verifier looks the field's
	 * "__safe_rcu"/"__safe_trusted" types up by name in the kernel's BTF,
	 * scans of it that were 7 of this program's 8 ms of verification. */
	fs = BPF_CORE_READ(task, fs);
	mm = BPF_CORE_READ(task, mm);
	rec.kind = PF_TASK;
	rec.flags = mm ? PF_HAS_MM : 0;
	rec.path_len = -1;
	bpf_seq_write(seq, &rec, sizeof(rec));
	rec.flags = 0;
	if (fs) {
		emit_link(seq, &rec, PF_CWD, BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry));
		emit_link(seq, &rec, PF_RTD, BPF_CORE_READ(fs, root.mnt),
			  BPF_CORE_READ(fs, root.dentry));
	}
	exe = mm ? BPF_CORE_READ(mm, exe_file) : NULL;
	if (exe)
		emit_link(seq, &rec, PF_TXT, BPF_CORE_READ(exe, f_path.mnt),
			  BPF_CORE_READ(exe, f_path.dentry));
	return 0;
}

/* The file of the last vma this CPU saw in this run, and whose: most vmas
 * of one file in a process follow one another (a library's text, data...),
 * and they need no lookup in seen_mapped (0.5 M lookups at 5,000
 * processes: 8% of the walk). A walk that moves to another CPU finds there
 * a mark of this run's (its generation) or none: a mark says the file was
 * sent for that process, in this run, as seen_mapped would. */
struct last_mapped {
	__u64 file;
	struct mapped_seen seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last_mapped);
} last_vma SEC(".maps");

SEC("iter/task_vma")
int snapshot_maps(struct bpf_iter__task_vma *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct vm_area_struct *vma = ctx->vma;
	struct vm_area_struct___anon_name *named = (void *)vma;
	struct kpeek_pfile_rec rec = {};
	struct kpeek_mapped_at at = {};
	struct mapped_seen now, *last;
	struct last_mapped *prev;
	struct file *file;
	struct inode *inode;
	__u32 zero = 0;
	bool fresh;

	if (!task || !vma)
		return 0;
	rec.tgid = task->tgid;
	if (task->pid != rec.tgid || !wanted_tgid(rec.tgid))
		return 0;
	file = vma->vm_file;
	if (!file)
		return 0;
	now.generation = snap_args.generation;
	now.tgid = rec.tgid;
	fresh = BPF_CORE_READ(seq, count) == 0;
	prev = bpf_map_lookup_elem(&last_vma, &zero);
	if (!prev)
		return 0;
	/* fresh (count == 0): perhaps shown again, see below. */
	if (!fresh && prev->file == (__u64)file && prev->seen.tgid == now.tgid &&
	    prev->seen.generation == now.generation)
		return 0; /* the vma before was of this file, and sent */
	if (named_anon_shmem(named))
		return 0;
	rec.kind = PF_MEM;
	rec.file = (__u64)file;
	prev->file = rec.file;
	prev->seen = now;
	last = bpf_map_lookup_elem(&seen_mapped, &rec.file);
	/* count == 0: perhaps a record that did not fit the last buffer and is
	 * shown again: send it whole (see snapshot_files). */
	if (last && last->generation == now.generation && !fresh) {
		if (last->tgid == now.tgid)
			return 0; /* another vma of a file this process already sent */
		last->tgid = now.tgid;
		rec.path_len = PATH_SEEN;
		bpf_seq_write(seq, &rec, sizeof(rec));
		return 0;
	}
	bpf_map_update_elem(&seen_mapped, &rec.file, &now, BPF_ANY);
	inode = BPF_CORE_READ(file, f_inode);
	if (inode) {
		rec.ino = BPF_CORE_READ(inode, i_ino);
		rec.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	}
	rec.f_mode = BPF_CORE_READ(file, f_mode);
	rec.path_len = -1;
	at.mount = (__u64)BPF_CORE_READ(file, f_path.mnt);
	at.dentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
	at.start = BPF_CORE_READ(vma, vm_start);
	at.end = BPF_CORE_READ(vma, vm_end);
	bpf_seq_write(seq, &rec, sizeof(rec));
	bpf_seq_write(seq, &at, sizeof(at));
	return 0;
}
