/* Networks: the guest's NICs and the network namespaces containers live in.
 *
 * A guest boots with a fixed set of NICs (microvm has no hotplug); the host
 * names them slots (SANDBOX) and hands a slot to a network namespace when a
 * container joins a network (NETWORK attach), taking it back on detach. A
 * slot in use lives in its namespace under the container's name for it
 * (eth0, eth1…) with the endpoint's MAC. Addresses and routes of both
 * families are set with plain ioctls; only moving a link between namespaces
 * needs rtnetlink. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

static struct netns *namespaces;
static int root_net = -1;

static int ctl_socket(void)
{
	return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

/* One ioctl on a socket of `family` (made in the current network namespace);
 * errno is the ioctl's. */
static int family_ioctl(int family, unsigned long request, void *arg)
{
	int s = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	int rc = ioctl(s, request, arg);
	int saved = errno;
	close(s);
	errno = saved;
	return rc;
}

static int set_flags(int s, const char *name, int up)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr))
		return -1;
	if (up)
		ifr.ifr_flags |= IFF_UP;
	else
		ifr.ifr_flags &= ~IFF_UP;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

int net_loopback_up(void)
{
	int s = ctl_socket();
	if (s < 0)
		return -1;
	int rc = set_flags(s, "lo", 1);
	close(s);
	return rc;
}

static int iface_by_mac(const char *mac, char *name, size_t cap)
{
	DIR *d = opendir("/sys/class/net");
	if (!d)
		return -1;
	struct dirent *e;
	int rc = -1;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], addr[64];
		snprintf(path, sizeof(path), "/sys/class/net/%s/address", e->d_name);
		if (read_file(path, addr, sizeof(addr)) < 0)
			continue;
		addr[strcspn(addr, "\n")] = 0;
		if (!strcasecmp(addr, mac)) {
			rc = snprintf(name, cap, "%s", e->d_name) < (int)cap ? 0 : -1;
			break;
		}
	}
	closedir(d);
	return rc;
}

static int parse_mac(const char *text, unsigned char out[6])
{
	unsigned v[6];
	if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		out[i] = (unsigned char)v[i];
	}
	return 0;
}

static int parse_cidr(const char *text, struct in_addr *addr, struct in_addr *mask)
{
	char ip[64];
	snprintf(ip, sizeof(ip), "%s", text);
	char *slash = strchr(ip, '/');
	int prefix = 32;
	if (slash) {
		*slash = 0;
		prefix = atoi(slash + 1);
		if (prefix < 0 || prefix > 32)
			return -1;
	}
	if (inet_pton(AF_INET, ip, addr) != 1)
		return -1;
	mask->s_addr = prefix ? htonl(~0u << (32 - prefix)) : 0;
	return 0;
}

static int parse_cidr6(const char *text, struct in6_addr *addr, int *prefix)
{
	char ip[64];
	snprintf(ip, sizeof(ip), "%s", text);
	char *slash = strchr(ip, '/');
	*prefix = 128;
	if (slash) {
		*slash = 0;
		char *end;
		long bits = strtol(slash + 1, &end, 10);
		if (end == slash + 1 || *end || bits < 0 || bits > 128)
			return -1;
		*prefix = (int)bits;
	}
	return inet_pton(AF_INET6, ip, addr) == 1 ? 0 : -1;
}

static int is_ipv6(const char *text)
{
	return strchr(text, ':') != NULL;
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
}

/* SIOCSIFADDR on an AF_INET6 socket takes this (linux/ipv6.h: musl ships no
 * kernel headers). */
struct in6_ifreq_ {
	struct in6_addr addr;
	uint32_t prefixlen;
	int ifindex;
};

/* -- rtnetlink: move (and rename) a link into another namespace ------------- */

/* The rtnetlink ABI (linux/netlink.h, linux/rtnetlink.h), stable since
 * Linux 2.6: musl ships no kernel headers, and this is all we use of them. */
#define NETLINK_ROUTE_ 0
#define NLM_F_REQUEST_ 1
#define NLM_F_ACK_ 4
#define NLMSG_ERROR_ 2
#define RTM_NEWLINK_ 16
#define IFLA_IFNAME_ 3
#define IFLA_NET_NS_FD_ 28
#define NL_ALIGN(len) (((len) + 3U) & ~3U)

struct nl_header {
	uint32_t len;
	uint16_t type, flags;
	uint32_t seq, pid;
};

struct nl_ifinfo {
	unsigned char family, pad;
	unsigned short type;
	int index;
	unsigned flags, change;
};

struct nl_attr {
	unsigned short len, type;
};

struct nl_address {
	sa_family_t family;
	unsigned short pad;
	uint32_t pid, groups;
};

struct nl_request {
	struct nl_header h;
	struct nl_ifinfo ifi;
	char attrs[256];
};

static void nl_add_attr(struct nl_request *r, unsigned short type, const void *data, size_t len)
{
	struct nl_attr *a = (struct nl_attr *)((char *)r + NL_ALIGN(r->h.len));
	a->type = type;
	a->len = (unsigned short)(sizeof(*a) + len);
	memcpy(a + 1, data, len);
	r->h.len = NL_ALIGN(r->h.len) + NL_ALIGN(a->len);
}

static int nl_talk(struct nl_request *r)
{
	int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE_);
	if (s < 0)
		return -1;
	struct nl_address sa = {.family = AF_NETLINK};
	int rc = -1;
	errno = 0;
	if (sendto(s, r, r->h.len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto out;
	/* The answer: a header, then the error number (0 for an ACK). */
	union {
		char bytes[4096];
		struct nl_header h;
	} reply;
	ssize_t n = recv(s, reply.bytes, sizeof(reply.bytes), 0);
	if (n < (ssize_t)(sizeof(struct nl_header) + sizeof(int)) || reply.h.type != NLMSG_ERROR_)
		goto out;
	int error;
	memcpy(&error, reply.bytes + sizeof(struct nl_header), sizeof(error));
	if (error) {
		errno = -error;
		goto out;
	}
	rc = 0;
out:
	if (rc && !errno)
		errno = EIO;
	int saved = errno;
	close(s);
	errno = saved;
	return rc;
}

/* Run in the namespace that holds `name` now. */
static int link_move(const char *name, int netns_fd, const char *new_name)
{
	unsigned index = if_nametoindex(name);
	if (!index)
		return -1;
	struct nl_request r = {0};
	r.h.len = sizeof(struct nl_header) + sizeof(struct nl_ifinfo);
	r.h.type = RTM_NEWLINK_;
	r.h.flags = NLM_F_REQUEST_ | NLM_F_ACK_;
	r.ifi.family = AF_UNSPEC;
	r.ifi.index = (int)index;
	uint32_t fd = (uint32_t)netns_fd;
	nl_add_attr(&r, IFLA_NET_NS_FD_, &fd, sizeof(fd));
	nl_add_attr(&r, IFLA_IFNAME_, new_name, strlen(new_name) + 1);
	return nl_talk(&r);
}

/* -- namespaces ---------------------------------------------------------------- */

int netns_enter(const struct netns *n)
{
	return setns(n->fd, CLONE_NEWNET);
}

void netns_leave(int unused)
{
	(void)unused;
	if (setns(root_net, CLONE_NEWNET))
		LOG("cannot return to the guest's network namespace: %s", strerror(errno));
}

struct netns *netns_get(const char *id, int create, struct err *e)
{
	for (struct netns *n = namespaces; n; n = n->next)
		if (!strcmp(n->id, id))
			return n;
	if (!create) {
		set_err(e, "notfound", ENOENT, "no network namespace %s", id);
		return NULL;
	}
	if (!valid_id(id)) {
		set_err(e, "invalid", EINVAL, "bad network namespace id");
		return NULL;
	}
	if (root_net < 0 && (root_net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) {
		set_err(e, "system", errno, "open own netns: %s", strerror(errno));
		return NULL;
	}
	struct netns *n = calloc(1, sizeof(*n));
	if (!n || unshare(CLONE_NEWNET)) {
		set_err(e, "system", errno, "new network namespace: %s", strerror(errno));
		free(n);
		return NULL;
	}
	n->fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	net_loopback_up();
	netns_leave(0);
	if (n->fd < 0) {
		set_err(e, "system", errno, "open new netns: %s", strerror(errno));
		free(n);
		return NULL;
	}
	snprintf(n->id, sizeof(n->id), "%s", id);
	n->next = namespaces;
	namespaces = n;
	return n;
}

/* -- NICs ---------------------------------------------------------------------- */

int net_name_nics(const struct json *nics, struct err *e)
{
	int s = ctl_socket();
	if (s < 0) {
		set_err(e, "system", errno, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = 0;
	for (const struct json *nic = nics ? nics->child : NULL; nic && !rc; nic = nic->next) {
		const char *mac = json_str(nic, "mac", "");
		const char *want = json_str(nic, "name", "");
		char name[IFNAMSIZ];
		if (!*want || strlen(want) >= IFNAMSIZ || iface_by_mac(mac, name, sizeof(name))) {
			set_err(e, "system", ENODEV, "no network interface with MAC %s", mac);
			rc = -1;
			break;
		}
		if (!strcmp(name, want))
			continue;
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
		snprintf(ifr.ifr_newname, IFNAMSIZ, "%s", want);
		if (ioctl(s, SIOCSIFNAME, &ifr)) {
			set_err(e, "system", errno, "rename %s to %s: %s", name, want, strerror(errno));
			rc = -1;
		}
	}
	close(s);
	return rc;
}

static int set_mac_mtu(int s, const char *name, const char *mac, long long mtu, struct err *e)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	unsigned char bytes[6];
	if (parse_mac(mac, bytes)) {
		set_err(e, "invalid", EINVAL, "bad MAC %s", mac);
		return -1;
	}
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, bytes, 6);
	if (ioctl(s, SIOCSIFHWADDR, &ifr)) {
		set_err(e, "system", errno, "MAC of %s: %s", name, strerror(errno));
		return -1;
	}
	if (mtu > 0) {
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
		ifr.ifr_mtu = (int)mtu;
		if (ioctl(s, SIOCSIFMTU, &ifr)) {
			set_err(e, "system", errno, "mtu of %s: %s", name, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* An IPv4 address on `ifname`, which may be an alias (eth0:1). */
static int add_ipv4(int s, const char *ifname, const char *cidr, struct err *e)
{
	struct in_addr ip, mask;
	if (parse_cidr(cidr, &ip, &mask)) {
		set_err(e, "invalid", EINVAL, "bad address %s for %s", cidr, ifname);
		return -1;
	}
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	set_sin(&ifr.ifr_addr, ip);
	if (ioctl(s, SIOCSIFADDR, &ifr)) {
		set_err(e, "system", errno, "address %s of %s: %s", cidr, ifname, strerror(errno));
		return -1;
	}
	set_sin(&ifr.ifr_netmask, mask);
	if (ioctl(s, SIOCSIFNETMASK, &ifr)) {
		set_err(e, "system", errno, "netmask of %s: %s", ifname, strerror(errno));
		return -1;
	}
	return 0;
}

static int add_ipv6(const char *ifname, const char *cidr, struct err *e)
{
	struct in6_ifreq_ req = {0};
	int prefix;
	if (parse_cidr6(cidr, &req.addr, &prefix)) {
		set_err(e, "invalid", EINVAL, "bad address %s for %s", cidr, ifname);
		return -1;
	}
	req.prefixlen = (uint32_t)prefix;
	req.ifindex = (int)if_nametoindex(ifname);
	/* EEXIST: the link-local address the kernel made from the MAC itself. */
	if (family_ioctl(AF_INET6, SIOCSIFADDR, &req) && errno != EEXIST) {
		set_err(e, "system", errno, "address %s of %s: %s", cidr, ifname, strerror(errno));
		return -1;
	}
	return 0;
}

/* An IPv6 setting of the interface, in the current network namespace. */
static int ipv6_conf(const char *ifname, const char *key, const char *value)
{
	char path[96];
	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/%s", ifname, key);
	return write_file(path, value, strlen(value), 0644);
}

/* Inside the namespace: IPv6 on or off, the IPv4 addresses (the first on the
 * interface, more on aliases), up, then the IPv6 addresses: with DAD off
 * they are usable at once. */
static int configure_address(int s, const char *name, const struct json *addrs, struct err *e)
{
	int has_ipv6 = 0;
	for (const struct json *a = addrs ? addrs->child : NULL; a; a = a->next) {
		if (a->type != J_STR) {
			set_err(e, "invalid", EINVAL, "bad address for %s", name);
			return -1;
		}
		has_ipv6 |= is_ipv6(a->str);
	}
	if (has_ipv6 && (ipv6_conf(name, "disable_ipv6", "0") || ipv6_conf(name, "accept_dad", "0"))) {
		set_err(e, "system", errno, "IPv6 on %s: %s", name, strerror(errno));
		return -1;
	}
	if (!has_ipv6)
		ipv6_conf(name, "disable_ipv6", "1"); /* best effort: a kernel may lack IPv6 */
	int aliases = 0;
	for (const struct json *a = addrs ? addrs->child : NULL; a; a = a->next) {
		if (is_ipv6(a->str))
			continue;
		char ifname[IFNAMSIZ];
		int len = aliases ? snprintf(ifname, sizeof(ifname), "%s:%d", name, aliases)
				  : snprintf(ifname, sizeof(ifname), "%s", name);
		if (len < 0 || len >= IFNAMSIZ) {
			set_err(e, "invalid", EINVAL, "too many addresses for %s", name);
			return -1;
		}
		if (add_ipv4(s, ifname, a->str, e))
			return -1;
		aliases++;
	}
	if (set_flags(s, name, 1)) {
		set_err(e, "system", errno, "bring up %s: %s", name, strerror(errno));
		return -1;
	}
	for (const struct json *a = addrs ? addrs->child : NULL; a; a = a->next) {
		if (is_ipv6(a->str) && add_ipv6(name, a->str, e))
			return -1;
	}
	return 0;
}

static int attach_nic(struct netns *n, const struct json *spec, struct err *e)
{
	const char *nic = json_str(spec, "nic", "");
	const char *name = json_str(spec, "name", "");
	if (!*nic || !*name || strlen(name) >= IFNAMSIZ) {
		set_err(e, "invalid", EINVAL, "attach needs a nic and a name");
		return -1;
	}
	int s = ctl_socket();
	if (s < 0) {
		set_err(e, "system", errno, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = -1;
	set_flags(s, nic, 0);
	if (set_mac_mtu(s, nic, json_str(spec, "mac", ""), json_int(spec, "mtu", 0), e))
		goto out;
	if (link_move(nic, n->fd, name)) {
		set_err(e, "system", errno, "move %s into namespace %s as %s: %s", nic, n->id, name,
			strerror(errno));
		goto out;
	}
	close(s);
	s = -1;
	if (netns_enter(n)) {
		set_err(e, "system", errno, "enter namespace %s: %s", n->id, strerror(errno));
		goto out;
	}
	s = ctl_socket();
	rc = s < 0 ? -1 : configure_address(s, name, json_get(spec, "addresses"), e);
	netns_leave(0);
out:
	if (s >= 0)
		close(s);
	return rc;
}

/* The interface `name` in `n` goes back to the guest's own namespace as `nic`. */
static int detach_nic(struct netns *n, const char *name, const char *nic, struct err *e)
{
	if (netns_enter(n)) {
		set_err(e, "system", errno, "enter namespace %s: %s", n->id, strerror(errno));
		return -1;
	}
	int s = ctl_socket();
	if (s >= 0) {
		set_flags(s, name, 0);
		close(s);
	}
	int rc = link_move(name, root_net, nic);
	int saved = errno;
	netns_leave(0);
	if (rc) {
		set_err(e, "system", saved, "move %s out of namespace %s: %s", name, n->id,
			strerror(saved));
		return -1;
	}
	return 0;
}

static int route4_ioctl(unsigned long request, const char *destination, const char *gateway)
{
	struct in_addr dst, mask, gw;
	if (parse_cidr(destination, &dst, &mask) || inet_pton(AF_INET, gateway, &gw) != 1) {
		errno = EINVAL;
		return -1;
	}
	struct rtentry rt = {0};
	set_sin(&rt.rt_dst, dst);
	set_sin(&rt.rt_genmask, mask);
	set_sin(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	return family_ioctl(AF_INET, request, &rt);
}

static int route6_ioctl(unsigned long request, const char *destination, const char *gateway)
{
	struct in6_rtmsg rt = {0};
	int prefix;
	if (parse_cidr6(destination, &rt.rtmsg_dst, &prefix) ||
	    inet_pton(AF_INET6, gateway, &rt.rtmsg_gateway) != 1) {
		errno = EINVAL;
		return -1;
	}
	rt.rtmsg_dst_len = (uint16_t)prefix;
	rt.rtmsg_metric = 1024; /* what `ip -6 route add` gives, and dockerd's default route has */
	rt.rtmsg_flags = RTF_UP | RTF_GATEWAY;
	return family_ioctl(AF_INET6, request, &rt);
}

static int route_ioctl(unsigned long request, const char *destination, const char *gateway)
{
	return is_ipv6(destination) ? route6_ioctl(request, destination, gateway)
				    : route4_ioctl(request, destination, gateway);
}

/* The namespace's gateway routes become exactly `routes`. */
static int set_routes(struct netns *n, const struct json *routes, struct err *e)
{
	if (netns_enter(n)) {
		set_err(e, "system", errno, "enter namespace %s: %s", n->id, strerror(errno));
		return -1;
	}
	int rc = 0;
	for (int i = 0; i < n->nroutes; i++)
		route_ioctl(SIOCDELRT, n->routes[i][0], n->routes[i][1]);
	n->nroutes = 0;
	for (const struct json *r = routes ? routes->child : NULL; r; r = r->next) {
		const char *destination = json_str(r, "destination", "0.0.0.0/0");
		const char *gateway = json_str(r, "gateway", "");
		if (route_ioctl(SIOCADDRT, destination, gateway) && errno != EEXIST) {
			set_err(e, errno == EINVAL ? "invalid" : "system", errno, "route %s via %s: %s",
				destination, gateway, strerror(errno));
			rc = -1;
			break;
		}
		if (n->nroutes < MAX_ROUTES) {
			snprintf(n->routes[n->nroutes][0], 48, "%s", destination);
			snprintf(n->routes[n->nroutes][1], 48, "%s", gateway);
			n->nroutes++;
		}
	}
	netns_leave(0);
	return rc;
}

static void netns_delete(struct netns *n)
{
	for (struct netns **pp = &namespaces; *pp; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			break;
		}
	}
	close(n->fd); /* processes still inside keep it, with only lo (as dockerd leaves them) */
	free(n);
}

int network_config(const struct json *req, struct err *e)
{
	const char *id = json_str(req, "netns", "");
	int deleting = json_bool(req, "delete", 0);
	struct netns *n = netns_get(id, !deleting, e);
	if (!n)
		return deleting ? 0 : -1;
	for (const struct json *d = json_get(req, "detach") ? json_get(req, "detach")->child : NULL;
	     d; d = d->next) {
		if (detach_nic(n, json_str(d, "name", ""), json_str(d, "nic", ""), e))
			return -1;
	}
	for (const struct json *a = json_get(req, "attach") ? json_get(req, "attach")->child : NULL;
	     a; a = a->next) {
		if (attach_nic(n, a, e))
			return -1;
	}
	if (json_get(req, "routes") && set_routes(n, json_get(req, "routes"), e))
		return -1;
	if (deleting)
		netns_delete(n);
	return 0;
}
