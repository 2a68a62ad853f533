// SPDX-License-Identifier: GPL-2.0
/* Two lists of slab objects from the module's own cache. The good one is
 * whole. On the bad one a node is freed while still linked (the bug) and the
 * very next allocation reuses its slot and initialises its list node, so the
 * list reaches a node that points to itself. */
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>

struct kpeek_node {
	struct list_head link;
	unsigned long value;
	char payload[48];
};

static LIST_HEAD(kpeek_good_list);
static LIST_HEAD(kpeek_bad_list);
static struct kmem_cache *kpeek_node_cache;

static struct kpeek_node *kpeek_new_node(struct list_head *list, unsigned long value, gfp_t gfp)
{
	struct kpeek_node *node = kmem_cache_alloc(kpeek_node_cache, gfp);

	if (node) {
		node->value = value;
		if (list)
			list_add_tail(&node->link, list);
	}
	return node;
}

static int __init kpeek_lists_init(void)
{
	struct kpeek_node *a, *b, *c, *reused;
	int i;

	/* A usercopy region keeps the cache from merging with another one. */
	kpeek_node_cache = kmem_cache_create_usercopy("kpeek_node", sizeof(struct kpeek_node), 0, 0,
						      offsetof(struct kpeek_node, payload),
						      sizeof(((struct kpeek_node *)0)->payload), NULL);
	if (!kpeek_node_cache)
		return -ENOMEM;
	for (i = 0; i < 3; i++)
		if (!kpeek_new_node(&kpeek_good_list, i, GFP_KERNEL))
			return -ENOMEM;
	/* One CPU throughout: SLUB's per-CPU freelist hands the freed slot back. */
	get_cpu();
	a = kpeek_new_node(&kpeek_bad_list, 10, GFP_ATOMIC);
	b = kpeek_new_node(&kpeek_bad_list, 11, GFP_ATOMIC);
	c = kpeek_new_node(&kpeek_bad_list, 12, GFP_ATOMIC);
	reused = NULL;
	if (a && b && c) {
		kmem_cache_free(kpeek_node_cache, b);
		reused = kpeek_new_node(NULL, 99, GFP_ATOMIC);
	}
	put_cpu();
	if (!reused)
		return -ENOMEM;
	INIT_LIST_HEAD(&reused->link);
	pr_info("kpeek_lists: good=%px bad=%px a=%px b=%px c=%px reused=%px\n",
		&kpeek_good_list, &kpeek_bad_list, a, b, c, reused);
	return 0;
}
module_init(kpeek_lists_init);
MODULE_LICENSE("GPL");
