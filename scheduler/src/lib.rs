//! kube-scheduler: binds unscheduled pods to nodes through Filter and Score plugins.
