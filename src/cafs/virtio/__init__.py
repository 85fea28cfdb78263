"""virtio: the filesystem served to virtual machines over vhost-user.

A virtual machine's front end (QEMU, cloud-hypervisor) hands its virtio-fs
device to cafs over a unix socket. ``vhost_user`` speaks the control
protocol (features, memory table, ring set-up); ``memory`` maps the guest's
RAM and translates its addresses; ``virtqueue`` reads requests from split
virtqueues and returns the used buffers; ``backend`` drives rings and
eventfds on asyncio; ``fs_device`` feeds each request to the FUSE session of
``cafs.fuse.server``, the same one ``/dev/fuse`` mounts use.

The ring accesses assume x86-64 (or any architecture whose stores are seen in
program order): Python cannot emit the store barriers weaker memory models need.
"""
