/* Interface and route configuration with plain ioctls: the guest needs a
 * handful of IPv4 settings, not a netlink library. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

static int ctl_socket(void)
{
	return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

static int set_up(int s, const char *name)
{
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr))
		return -1;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

int net_loopback_up(void)
{
	int s = ctl_socket();
	if (s < 0)
		return -1;
	int rc = set_up(s, "lo");
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

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
}

static int configure_iface(int s, const struct json *iface, struct err *e)
{
	const char *mac = json_str(iface, "mac", "");
	const char *want = json_str(iface, "name", "");
	char name[IFNAMSIZ];
	if (iface_by_mac(mac, name, sizeof(name))) {
		set_err(e, "system", ENODEV, "no network interface with MAC %s", mac);
		return -1;
	}
	struct ifreq ifr = {0};
	if (*want && strcmp(want, name)) {
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
		snprintf(ifr.ifr_newname, IFNAMSIZ, "%s", want);
		if (ioctl(s, SIOCSIFNAME, &ifr)) {
			set_err(e, "system", errno, "rename %s to %s: %s", name, want, strerror(errno));
			return -1;
		}
		snprintf(name, sizeof(name), "%s", want);
	}
	long long mtu = json_int(iface, "mtu", 0);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (mtu > 0 && (ioctl(s, SIOCGIFMTU, &ifr) || ifr.ifr_mtu != mtu)) {
		ifr.ifr_mtu = (int)mtu;
		if (ioctl(s, SIOCSIFMTU, &ifr)) {
			set_err(e, "system", errno, "mtu of %s: %s", name, strerror(errno));
			return -1;
		}
	}
	const struct json *addrs = json_get(iface, "addresses");
	int first = 1;
	for (const struct json *a = addrs ? addrs->child : NULL; a; a = a->next) {
		struct in_addr ip, mask;
		if (a->type != J_STR || parse_cidr(a->str, &ip, &mask)) {
			set_err(e, "invalid", EINVAL, "bad address for %s", name);
			return -1;
		}
		if (!first) {
			/* ioctls hold one IPv4 address per interface; the rest are aliases. */
			continue;
		}
		first = 0;
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
		set_sin(&ifr.ifr_addr, ip);
		if (ioctl(s, SIOCSIFADDR, &ifr)) {
			set_err(e, "system", errno, "address of %s: %s", name, strerror(errno));
			return -1;
		}
		set_sin(&ifr.ifr_netmask, mask);
		if (ioctl(s, SIOCSIFNETMASK, &ifr)) {
			set_err(e, "system", errno, "netmask of %s: %s", name, strerror(errno));
			return -1;
		}
	}
	if (set_up(s, name)) {
		set_err(e, "system", errno, "bring up %s: %s", name, strerror(errno));
		return -1;
	}
	return 0;
}

static int add_route(int s, const struct json *route, struct err *e)
{
	struct in_addr dst, mask, gw;
	const char *destination = json_str(route, "destination", "0.0.0.0/0");
	const char *gateway = json_str(route, "gateway", "");
	if (parse_cidr(destination, &dst, &mask) || inet_pton(AF_INET, gateway, &gw) != 1) {
		set_err(e, "invalid", EINVAL, "bad route %s via %s", destination, gateway);
		return -1;
	}
	struct rtentry rt = {0};
	set_sin(&rt.rt_dst, dst);
	set_sin(&rt.rt_genmask, mask);
	set_sin(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(s, SIOCADDRT, &rt) && errno != EEXIST) {
		set_err(e, "system", errno, "route %s via %s: %s", destination, gateway,
			strerror(errno));
		return -1;
	}
	return 0;
}

int net_configure(const struct json *spec, struct err *e)
{
	int s = ctl_socket();
	if (s < 0) {
		set_err(e, "system", errno, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = 0;
	const struct json *ifaces = json_get(spec, "interfaces");
	for (const struct json *i = ifaces ? ifaces->child : NULL; i && !rc; i = i->next)
		rc = configure_iface(s, i, e);
	const struct json *routes = json_get(spec, "routes");
	for (const struct json *r = routes ? routes->child : NULL; r && !rc; r = r->next)
		rc = add_route(s, r, e);
	close(s);
	return rc;
}
