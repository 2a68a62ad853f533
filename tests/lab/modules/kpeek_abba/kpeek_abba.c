// SPDX-License-Identifier: GPL-2.0
/* Two kernel threads take two mutexes in opposite order: an ABBA deadlock.
 * Each waits until the other holds its first lock, so the deadlock is certain. */
#include <linux/completion.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>

static DEFINE_MUTEX(kpeek_lock_a);
static DEFINE_MUTEX(kpeek_lock_b);
static DECLARE_COMPLETION(kpeek_a_held);
static DECLARE_COMPLETION(kpeek_b_held);

static int kpeek_take_a_then_b(void *unused)
{
	mutex_lock(&kpeek_lock_a);
	complete(&kpeek_a_held);
	wait_for_completion(&kpeek_b_held);
	mutex_lock(&kpeek_lock_b); /* never returns */
	return 0;
}

static int kpeek_take_b_then_a(void *unused)
{
	mutex_lock(&kpeek_lock_b);
	complete(&kpeek_b_held);
	wait_for_completion(&kpeek_a_held);
	mutex_lock(&kpeek_lock_a); /* never returns */
	return 0;
}

static int __init kpeek_abba_init(void)
{
	struct task_struct *a = kthread_run(kpeek_take_a_then_b, NULL, "kpeek_abba_a");
	struct task_struct *b = kthread_run(kpeek_take_b_then_a, NULL, "kpeek_abba_b");

	if (IS_ERR(a) || IS_ERR(b))
		return -ENOMEM;
	pr_info("kpeek_abba: lock_a=%px lock_b=%px task_a=%px pid %d task_b=%px pid %d\n",
		&kpeek_lock_a, &kpeek_lock_b, a, a->pid, b, b->pid);
	return 0;
}
module_init(kpeek_abba_init);
MODULE_LICENSE("GPL");
