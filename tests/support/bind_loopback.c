/* LD_PRELOAD shim for the tests and benchmarks: a bind() to the IPv4 wildcard address binds to
 * 127.0.0.1 instead. DCMTK 3.6.7 servers (wlmscpfs, storescp) have no listen-address option
 * and would listen on every interface; with this shim a test server stays on loopback.
 * Built by support.peers.build_bind_shim (cc -shared -fPIC ... -ldl) for the tests' DCMTK and
 * Orthanc peers and for the benchmarks. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (real_bind == NULL) {
        real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    }
    if (addr != NULL && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in loopback;
        memcpy(&loopback, addr, sizeof loopback);
        if (loopback.sin_addr.s_addr == htonl(INADDR_ANY)) {
            loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
        }
    }
    return real_bind(fd, addr, len);
}
