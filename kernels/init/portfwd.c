/* The `connect PORT` builtin (kubectl port-forward): a TCP connection to
 * PORT on the pod's own loopback, relayed to the host over the process's
 * stdin and stdout. As containerd does it, the connection is opened inside
 * the pod's network namespace (the child has entered it) to 127.0.0.1, or
 * to ::1 when that fails, so a server listening on localhost only is
 * reached too, which the pod's address from the host never reaches.
 *
 * Both directions are buffered and non-blocking: a peer that answers while
 * it is sent a lot (an echo) must not deadlock the relay. The host's EOF on
 * stdin half-closes the connection (the peer then sees EOF); the peer's EOF
 * ends the relay once what it sent has reached stdout. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "init.h"

#define RELAY_BUFFER 65536

struct relay_half {
	int from, to;
	char buf[RELAY_BUFFER];
	size_t len, off;
	int eof;     /* `from` ended (or `to` refuses more): nothing more to move */
};

/* Go's wording of a failed dial, as containerd's error text carries it. */
static int dial(int family, const char *shown, int port, char *err, size_t errlen)
{
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
				  .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int rc = fd < 0 ? -1 : family == AF_INET ? connect(fd, (struct sockaddr *)&v4, sizeof(v4))
						 : connect(fd, (struct sockaddr *)&v6, sizeof(v6));
	if (rc == 0)
		return fd;
	char reason[128];
	snprintf(reason, sizeof(reason), "%s", strerror(errno));
	reason[0] = (char)(reason[0] >= 'A' && reason[0] <= 'Z' ? reason[0] + 32 : reason[0]);
	snprintf(err, errlen, "dial tcp%d %s:%d: connect: %s", family == AF_INET ? 4 : 6, shown,
		 port, reason);
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Move what `h->from` has into `h->to`, as far as either lets us now. */
static int relay_step(struct relay_half *h, short from_events, short to_events, int to_sock)
{
	if (h->len == 0 && !h->eof && (from_events & (POLLIN | POLLHUP | POLLERR))) {
		ssize_t n = read(h->from, h->buf, sizeof(h->buf));
		if (n > 0) {
			h->len = (size_t)n;
			h->off = 0;
		} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			h->eof = 1;
		}
	}
	if (h->len > 0 && (to_events & (POLLOUT | POLLERR | POLLHUP))) {
		ssize_t n = to_sock ? send(h->to, h->buf + h->off, h->len, MSG_NOSIGNAL)
				    : write(h->to, h->buf + h->off, h->len);
		if (n > 0) {
			h->off += (size_t)n;
			h->len -= (size_t)n;
		} else if (errno != EAGAIN && errno != EINTR) {
			h->len = 0; /* the receiver is gone: drop the rest */
			h->eof = 1;
			return -1;
		}
	}
	return 0;
}

static void relay(int sock)
{
	static struct relay_half up, down; /* host -> pod, pod -> host */
	up = (struct relay_half){.from = 0, .to = sock};
	down = (struct relay_half){.from = sock, .to = 1};
	fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
	fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
	fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
	int half_closed = 0;
	while (!(down.eof && down.len == 0)) {
		if (up.eof && up.len == 0 && !half_closed) {
			shutdown(sock, SHUT_WR);
			half_closed = 1;
		}
		/* 0: host stdin, 1: the connection, 2: host stdout */
		struct pollfd fds[3] = {{.fd = -1}, {.fd = sock}, {.fd = -1}};
		if (!up.eof && up.len == 0)
			fds[0] = (struct pollfd){.fd = 0, .events = POLLIN};
		if (up.len > 0)
			fds[1].events |= POLLOUT;
		if (down.len == 0)
			fds[1].events |= POLLIN;
		if (down.len > 0)
			fds[2] = (struct pollfd){.fd = 1, .events = POLLOUT};
		if (poll(fds, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		relay_step(&up, fds[0].revents, fds[1].revents, 1);
		if (relay_step(&down, fds[1].revents, fds[2].revents, 0))
			return; /* the host no longer reads */
	}
}

int builtin_connect(const char *port_text)
{
	char *end = NULL;
	long port = strtol(port_text, &end, 10);
	if (!*port_text || *end || port < 1 || port > 65535) {
		fprintf(stderr, "invalid port: %s\n", port_text);
		return 1;
	}
	char err4[192], err6[192];
	int sock = dial(AF_INET, "127.0.0.1", (int)port, err4, sizeof(err4));
	if (sock < 0)
		sock = dial(AF_INET6, "[::1]", (int)port, err6, sizeof(err6));
	if (sock < 0) {
		fprintf(stderr, "%s; %s\n", err4, err6);
		return 1;
	}
	relay(sock);
	close(sock);
	return 0;
}
