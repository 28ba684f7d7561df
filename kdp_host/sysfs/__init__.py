"""The sysfs model: devices of USB, PCI, any bus or class, as the kernel describes them.

The package exports nothing itself: what the config's checks need of it (`entry.py`: bus
names, template fields, the read timeout's default; `match.py`: the patterns of an entry) is
all a run with no sysfs entry loads; the model (`model.py`), reading sysfs (`reader.SysfsReader`,
`tree`, `nodes`, `index`) and `kdp-host discover` (`discover`, `describe`, `ids`, `render`,
`cli`'s body) load only where they are used.
"""
