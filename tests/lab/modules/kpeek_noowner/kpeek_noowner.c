// SPDX-License-Identifier: GPL-2.0
/* The bug: a misc device whose file_operations lack .owner. The module can be
 * unloaded while a process holds the device open; the next read() calls into
 * freed module text and oopses. */
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>

static ssize_t kpeek_noowner_read(struct file *file, char __user *buf, size_t len,
				  loff_t *pos)
{
	return 0;
}

static const struct file_operations kpeek_noowner_fops = {
	.read = kpeek_noowner_read,
};

static struct miscdevice kpeek_noowner_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "kpeek_noowner",
	.fops = &kpeek_noowner_fops,
};

static int __init kpeek_noowner_init(void)
{
	int err = misc_register(&kpeek_noowner_dev);

	if (!err)
		pr_info("kpeek_noowner: read=%px\n", kpeek_noowner_read);
	return err;
}

static void __exit kpeek_noowner_exit(void)
{
	misc_deregister(&kpeek_noowner_dev);
}
module_init(kpeek_noowner_init);
module_exit(kpeek_noowner_exit);
MODULE_LICENSE("GPL");
