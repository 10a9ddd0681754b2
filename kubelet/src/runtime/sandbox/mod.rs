//! Pod sandboxes: per-pod network, IPC and UTS namespaces kept alive by bind mounts, the
//! pod's veth on the node bridge with an IP from the podCIDR, and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`. (Being written.)
