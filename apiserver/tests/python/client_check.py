"""The official Python `kubernetes` client against an rkube apiserver.

Usage: python3 client_check.py KUBECONFIG

Exits 0 when every check passed; otherwise prints what failed and exits 1. Run by
apiserver/tests/python_client.rs against an in-process apiserver on each backend.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NAMESPACE = "default"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def config_map(name, data):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "python-test"}),
        data=data,
    )


def deployment(name):
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(name="web", image="busybox:1.36", command=["httpd", "-f", "-p", "8080"]),
                        client.V1Container(name="sidecar", image="busybox:1.36", command=["sleep", "3600"]),
                    ]
                ),
            ),
        ),
    )


def namespaces(core):
    names = [n.metadata.name for n in core.list_namespace().items]
    check("default" in names and "kube-system" in names, f"namespaces: {names}")


def config_maps(core):
    created = core.create_namespaced_config_map(NAMESPACE, config_map("settings", {"a": "1"}))
    check(created.metadata.uid and created.metadata.resource_version, f"create answered {created.metadata}")
    try:
        core.create_namespaced_config_map(NAMESPACE, config_map("settings", {}))
        raise AssertionError("a second create succeeded")
    except ApiException as e:
        check(e.status == 409, f"second create: {e.status} {e.body}")
    got = core.read_namespaced_config_map("settings", NAMESPACE)
    check(got.data == {"a": "1"}, f"read: {got.data}")
    try:
        core.read_namespaced_config_map("missing", NAMESPACE)
        raise AssertionError("read of a missing object succeeded")
    except ApiException as e:
        check(e.status == 404, f"read missing: {e.status} {e.body}")

    # The client's default patch content type: a dict body goes out as a strategic merge
    # patch, a list body as a JSON patch.
    patched = core.patch_namespaced_config_map("settings", NAMESPACE, {"data": {"b": "2"}})
    check(patched.data == {"a": "1", "b": "2"}, f"strategic patch: {patched.data}")
    patched = core.patch_namespaced_config_map(
        "settings", NAMESPACE, [{"op": "replace", "path": "/data/a", "value": "10"}]
    )
    check(patched.data == {"a": "10", "b": "2"}, f"json patch: {patched.data}")

    listed = core.list_namespaced_config_map(NAMESPACE, label_selector="app=python-test")
    check([c.metadata.name for c in listed.items] == ["settings"], f"list by label: {listed.items}")
    listed = core.list_namespaced_config_map(NAMESPACE, field_selector="metadata.name=settings")
    check(len(listed.items) == 1, f"list by field: {listed.items}")

    status = core.delete_namespaced_config_map("settings", NAMESPACE)
    check(status is not None, "delete answered nothing")
    try:
        core.read_namespaced_config_map("settings", NAMESPACE)
        raise AssertionError("settings still there after delete")
    except ApiException as e:
        check(e.status == 404, f"read after delete: {e.status}")


def deployments(apps):
    apps.create_namespaced_deployment(NAMESPACE, deployment("web"))
    got = apps.read_namespaced_deployment("web", NAMESPACE)
    check(got.spec.strategy.type == "RollingUpdate", f"deployment defaults: {got.spec.strategy}")
    # Strategic merge: the container list merges by name.
    patched = apps.patch_namespaced_deployment(
        "web", NAMESPACE, {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "busybox:1.37"}]}}}}
    )
    images = [c.image for c in patched.spec.template.spec.containers]
    check(images == ["busybox:1.37", "busybox:1.36"], f"strategic patch by container name: {images}")
    scaled = apps.patch_namespaced_deployment_scale("web", NAMESPACE, {"spec": {"replicas": 3}})
    check(scaled.spec.replicas == 3, f"scale: {scaled.spec}")
    check(apps.read_namespaced_deployment("web", NAMESPACE).spec.replicas == 3, "scale not reflected in the deployment")
    names = [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items]
    check("web" in names, f"deployments: {names}")
    apps.delete_namespaced_deployment("web", NAMESPACE)
    try:
        apps.read_namespaced_deployment("web", NAMESPACE)
        raise AssertionError("deployment still there after delete")
    except ApiException as e:
        check(e.status == 404, f"read after delete: {e.status}")


def watch_sequence(core):
    start = core.list_namespaced_config_map(NAMESPACE).metadata.resource_version
    events = []
    errors = []

    def consume():
        try:
            w = watch.Watch()
            for ev in w.stream(
                core.list_namespaced_config_map,
                NAMESPACE,
                resource_version=start,
                timeout_seconds=20,
            ):
                obj = ev["object"]
                if obj.metadata.name != "watched":
                    continue
                events.append((ev["type"], (obj.data or {}).get("v"), obj.metadata.resource_version))
                if ev["type"] == "DELETED":
                    w.stop()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    # The watch starts from `start`, so writes made before the stream is open are still
    # delivered: no sleep is needed to order them after it.
    core.create_namespaced_config_map(NAMESPACE, config_map("watched", {"v": "0"}))
    core.patch_namespaced_config_map("watched", NAMESPACE, {"data": {"v": "1"}})
    core.delete_namespaced_config_map("watched", NAMESPACE)
    thread.join(30)
    check(not thread.is_alive(), f"watch did not end; events so far: {events}")
    check(not errors, f"watch failed: {errors}")
    kinds = [(t, v) for t, v, _ in events]
    check(kinds == [("ADDED", "0"), ("MODIFIED", "1"), ("DELETED", "1")], f"watch events: {events}")
    rvs = [int(rv) for _, _, rv in events]
    check(rvs == sorted(rvs) and len(set(rvs)) == len(rvs), f"resourceVersions not increasing: {rvs}")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    config.load_kube_config(config_file=sys.argv[1])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    steps = [
        ("namespaces", lambda: namespaces(core)),
        ("configmaps", lambda: config_maps(core)),
        ("deployments", lambda: deployments(apps)),
        ("watch", lambda: watch_sequence(core)),
    ]
    failed = False
    for name, step in steps:
        started = time.monotonic()
        try:
            step()
            print(f"ok   {name} ({time.monotonic() - started:.2f}s)")
        except ApiException as e:
            failed = True
            print(f"FAIL {name}: API error {e.status} {e.reason}: {e.body}")
        except Exception as e:
            failed = True
            print(f"FAIL {name}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
