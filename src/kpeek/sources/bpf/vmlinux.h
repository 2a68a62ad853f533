/* SPDX-License-Identifier: GPL-2.0 */
/* The kernel types kpeek's BPF programs use, kept by hand: only the fields
 * the programs read, each struct marked preserve_access_index so clang
 * records every access as a CO-RE relocation. libbpf resolves those by
 * name against the running kernel's BTF when it loads the object, so
 * offsets and the fields around them may differ from kernel to kernel;
 * only the names and the field types (their sizes) here must match.
 *
 * Fields that only some kernels have are in "flavour" structs
 * (struct foo___bar) next to the program that guards them with
 * bpf_core_field_exists; nothing here comes from one particular kernel.
 * Adding a field: copy its declaration (with its exact type) from the
 * kernel source, under the struct that holds it.
 */
#ifndef KPEEK_VMLINUX_H
#define KPEEK_VMLINUX_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
enum { false = 0, true = 1 };

typedef __u32 u32;
typedef __u64 u64;
typedef int pid_t;
typedef unsigned int uid_t;
typedef __u32 dev_t;
typedef unsigned short umode_t;
typedef unsigned int fmode_t;
typedef long long loff_t;
typedef unsigned long size_t;

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	long counter;
} atomic_long_t;

typedef struct {
	uid_t val;
} kuid_t;

struct ns_common {
	unsigned int inum;
};

struct pid_namespace {
	struct ns_common ns;
};
struct mnt_namespace {
	struct ns_common ns;
};
struct net {
	struct ns_common ns;
};
struct ipc_namespace {
	struct ns_common ns;
};
struct uts_namespace {
	struct ns_common ns;
};
struct cgroup_namespace {
	struct ns_common ns;
};
struct time_namespace {
	struct ns_common ns;
};
struct user_namespace {
	struct ns_common ns;
};

struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct net *net_ns;
	struct time_namespace *time_ns;
	struct cgroup_namespace *cgroup_ns;
};

struct upid {
	int nr;
	struct pid_namespace *ns;
};

struct pid {
	unsigned int level;
	struct upid numbers[];
};

enum pid_type {
	PIDTYPE_PID,
	PIDTYPE_TGID,
	PIDTYPE_PGID,
	PIDTYPE_SID,
	PIDTYPE_MAX,
};

struct signal_struct {
	struct pid *pids[PIDTYPE_MAX];
};

struct cred {
	kuid_t uid;
	kuid_t euid;
	struct user_namespace *user_ns;
};

struct sched_entity {
	unsigned char on_rq;
	u64 exec_start;
};

/* x86-64 names (the objects are built for x86, see build.py); elsewhere
 * the fields do not exist and the programs say so. */
struct thread_info {
	u32 cpu; /* 5.16+ with THREAD_INFO_IN_TASK; task_struct.cpu before */
};

struct pt_regs {
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
};

struct list_head {
	struct list_head *next, *prev;
};

/* Sleeping locks and their waiter records (kernel/locking/), for the
 * offsets the doctor reads them at (see snapshot.bpf.c: lock_layout). */
struct mutex {
	atomic_long_t owner;
	struct list_head wait_list;
};

struct rw_semaphore {
	atomic_long_t count;
	atomic_long_t owner;
	struct list_head wait_list;
};

struct semaphore {
	unsigned int count;
	struct list_head wait_list;
};

struct mutex_waiter {
	struct list_head list;
	struct task_struct *task;
};

struct rwsem_waiter {
	struct list_head list;
	struct task_struct *task;
	unsigned long timeout;
};

struct semaphore_waiter {
	struct list_head list;
	struct task_struct *task;
};

struct thread_struct {
	unsigned long sp; /* x86-64 */
};

struct fdtable {
	unsigned long *close_on_exec;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	struct thread_info thread_info;
	unsigned int __state; /* 5.14+; "state" before (task_struct___state) */
	void *stack;
	unsigned int flags;
	unsigned int ptrace;
	int on_rq;
	struct sched_entity se;
	int exit_state;
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	struct task_struct *parent; /* the tracer while ptraced */
	struct pid *thread_pid;
	u64 start_boottime;
	const struct cred *real_cred;
	char comm[16];
	struct files_struct *files;
	struct nsproxy *nsproxy;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct signal_struct *signal;
	struct thread_struct thread;
};

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
};

struct file_lock_context;

struct inode {
	struct rw_semaphore i_rwsem;
	umode_t i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
	const unsigned int i_nlink;
	dev_t i_rdev;
	loff_t i_size;
	struct file_lock_context *i_flctx;
};

struct dentry {
	struct inode *d_inode;
};

struct vfsmount {
	struct dentry *mnt_root;
};

struct mount {
	struct vfsmount mnt;
	int mnt_id;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	fmode_t f_mode;
	loff_t f_pos;
	unsigned int f_flags;
};

struct fs_struct {
	struct path root, pwd;
};

struct mm_struct {
	struct file *exe_file; /* __rcu */
};

struct vm_area_struct {
	unsigned long vm_start; /* in an anonymous struct since 6.5: CO-RE finds it */
	unsigned long vm_end;
	struct file *vm_file;
};

struct seq_file {
	size_t count;
};

/* BPF iterator contexts (include/linux/bpf.h, kernel/bpf/task_iter.c). */
struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
};

struct bpf_iter__task_vma {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	struct vm_area_struct *vma;
};

#pragma clang attribute pop

/* Helper ids (include/uapi/linux/bpf.h), for bpf_core_enum_value_exists:
 * the kernel's own enum bpf_func_id says which helpers it has. */
enum bpf_func_id {
	BPF_FUNC_seq_write = 127,
	BPF_FUNC_d_path = 147,
	BPF_FUNC_snprintf = 165,
	BPF_FUNC_get_task_stack = 141,
	BPF_FUNC_get_current_task_btf = 158,
	BPF_FUNC_task_pt_regs = 175,
	BPF_FUNC_loop = 181,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
};

#endif /* KPEEK_VMLINUX_H */
