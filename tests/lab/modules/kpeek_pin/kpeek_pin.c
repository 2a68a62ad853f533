// SPDX-License-Identifier: GPL-2.0
/* A misc device whose file_operations name their module (.owner): an open
 * file holds a reference, so the module cannot be unloaded while it is open. */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>

static const struct file_operations kpeek_pin_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.llseek = no_llseek,
};

static struct miscdevice kpeek_pin_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "kpeek_pin",
	.fops = &kpeek_pin_fops,
};

static int __init kpeek_pin_init(void)
{
	int err = misc_register(&kpeek_pin_dev);

	if (!err)
		pr_info("kpeek_pin: fops=%px module=%px\n", &kpeek_pin_fops, THIS_MODULE);
	return err;
}

static void __exit kpeek_pin_exit(void)
{
	misc_deregister(&kpeek_pin_dev);
}
module_init(kpeek_pin_init);
module_exit(kpeek_pin_exit);
MODULE_LICENSE("GPL");
