"""TEST INFRASTRUCTURE: the node agent's stand-in for a pod network namespace (an LD_PRELOAD library).

In a real cluster every pod has its own network namespace, so a server that listens on the wildcard address
(0.0.0.0 or ::) is reachable only at its pod's IP. Here pods are plain processes on the host, and some of what
they run listens on the wildcard with no option to change it — torchrun's rendezvous TCPStore (c10d) binds
`*:MASTER_PORT` in C++. That would break our rule that tests bind 127.0.0.0/8 only, and two pods of the same
PyTorchJob shape would collide on the one fixed port.

This small library wraps `bind(2)`: a bind to the IPv4 or IPv6 wildcard becomes a bind to the pod's loopback IP
(from NODE_AGENT_POD_IP; IPv6 sockets get the v4-mapped form). Every other bind passes through untouched. It is
compiled once per test session with the system C compiler; without one the node agent cannot run pods.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

POD_IP_ENV = "NODE_AGENT_POD_IP"

SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind = NULL;
    if (real_bind == NULL) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    const char *ip = getenv("NODE_AGENT_POD_IP");
    if (ip != NULL && addr != NULL) {
        if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
            struct sockaddr_in v4 = *(const struct sockaddr_in *)addr;
            if (v4.sin_addr.s_addr == htonl(INADDR_ANY) && inet_pton(AF_INET, ip, &v4.sin_addr) == 1)
                return real_bind(fd, (const struct sockaddr *)&v4, sizeof v4);
        } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
            struct sockaddr_in6 v6 = *(const struct sockaddr_in6 *)addr;
            char mapped[INET6_ADDRSTRLEN + 8];
            snprintf(mapped, sizeof mapped, "::ffff:%s", ip);
            if (IN6_IS_ADDR_UNSPECIFIED(&v6.sin6_addr) && inet_pton(AF_INET6, mapped, &v6.sin6_addr) == 1)
                return real_bind(fd, (const struct sockaddr *)&v6, sizeof v6);
        }
    }
    return real_bind(fd, addr, len);
}
"""


class ShimError(RuntimeError):
    """The library could not be built (no C compiler, or it failed)."""


def build(cache_dir: Path) -> Path:
    """Compile the library into `cache_dir` (keyed by the source's hash: rebuilt only when it changes)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    library = cache_dir / f"nodeagent-bind-{digest}.so"
    if library.is_file():
        return library
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise ShimError("no C compiler (cc, gcc or clang) to build the node agent's bind shim")
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = cache_dir / f"nodeagent-bind-{digest}.c"
    source.write_text(SOURCE)
    partial = library.with_suffix(".so.tmp")
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ShimError(f"{compiler} failed to build the bind shim:\n{result.stderr}")
    partial.rename(library)
    return library
