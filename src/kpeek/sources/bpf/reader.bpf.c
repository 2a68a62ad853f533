// SPDX-License-Identifier: GPL-2.0
/* kpeek's kernel memory reader and task address list.
 *
 * read_memory: userspace puts up to MAX_REQS (address, size) pairs in the
 * global `args`, attaches this iter/task program to its own thread only
 * and reads the iterator: for each request the program writes an 8-byte
 * result (0 or -errno from bpf_probe_read_kernel) followed, on success, by
 * the bytes. A bad address is an error code, never a fault: the helper
 * uses copy_from_kernel_nofault.
 *
 * task_addresses: one record (task address, tid, tgid) for every task, and
 * one for its parent.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_REQS 7 /* 7 * (8 + 4096) fits one 32 KiB seq_file buffer */
#define CHUNK 4096

struct kpeek_request {
	__u64 addr;
	__u32 size;
	__u32 pad;
};

struct kpeek_reader_args {
	__u32 count;
	__u32 pad;
	struct kpeek_request reqs[MAX_REQS];
};

struct kpeek_reader_args args = {};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[CHUNK]);
} scratch SEC(".maps");

SEC("iter/task")
int read_memory(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	__u32 zero = 0;
	char *buf;

	if (!ctx->task || ctx->meta->seq_num != 0)
		return 0;
	buf = bpf_map_lookup_elem(&scratch, &zero);
	if (!buf)
		return 0;
	for (int i = 0; i < MAX_REQS; i++) {
		__u64 addr;
		__u32 size;
		__s64 err;

		if (i >= args.count)
			break;
		addr = args.reqs[i].addr;
		size = args.reqs[i].size;
		if (size > CHUNK)
			size = CHUNK;
		err = bpf_probe_read_kernel(buf, size, (const void *)addr);
		bpf_seq_write(seq, &err, sizeof(err));
		if (err == 0)
			bpf_seq_write(seq, buf, size);
	}
	return 0;
}

struct kpeek_task_record {
	__u64 address;
	__u32 tid;
	__u32 tgid;
};

SEC("iter/task")
int task_addresses(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task, *parent;
	struct kpeek_task_record rec;

	if (!task)
		return 0;
	rec.address = (__u64)task;
	rec.tid = BPF_CORE_READ(task, pid);
	rec.tgid = BPF_CORE_READ(task, tgid);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	/* The parent too: some kernels hide a task from the iterator (pid 1 in
	 * a sandbox); its children still point at it. */
	parent = BPF_CORE_READ(task, real_parent);
	if (parent && parent != task) {
		rec.address = (__u64)parent;
		rec.tid = BPF_CORE_READ(parent, pid);
		rec.tgid = BPF_CORE_READ(parent, tgid);
		if (rec.tid)  /* not the idle task (pid 0), parent of pid 1 and 2 */
			bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	}
	return 0;
}
