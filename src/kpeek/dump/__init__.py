"""Crash dumps: the file (ELF vmcore, kdump-compressed), its VMCOREINFO, and
the kernel's own symbols and types read from the memory inside it.

drgn reads the file formats and translates virtual addresses through the
dump's page tables; everything above memory (kallsyms, BTF, tasks) is kpeek's.
"""
