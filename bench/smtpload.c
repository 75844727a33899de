/*
 * smtpload: a small SMTP load generator in C for the benchmarks, so that the
 * client takes little of the CPU the servers share it with (the asyncio
 * client of bench/workers.py uses 50-70 µs of CPU per message; Postfix's
 * smtp-source about as much, and it cannot pipeline).
 *
 *   smtpload HOST PORT CONNECTIONS MESSAGES RECIPIENT BODYFILE [PIPELINING]
 *
 * Opens CONNECTIONS connections at once, says EHLO on each, and sends
 * MESSAGES messages in all to RECIPIENT (a message per connection at a time,
 * the next to whichever connection is free): MAIL, RCPT and DATA in one
 * write (PIPELINING, RFC 2920, when the last argument is 1, the default) or
 * one command per round trip (0), then after 354 the line
 * "X-Bench-Id: N" (N = 0 .. MESSAGES-1), the contents of BODYFILE (CRLF
 * lines, no line starting with a dot) and ".". Every reply must be the
 * expected one (250, 250, 354, 250); any other ends the run with status 1
 * and the reply on stderr. Prints "accepted N seconds S waited W" when done:
 * W is how long it waited for a core while runnable (seconds, from
 * /proc/self/schedstat; 0 where there is none): a client that waits for a
 * core is starved, and the server's rate then measures the client.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { GREETING, EHLO, ENVELOPE, BODY, QUIT, DONE };

struct conn {
    int fd;
    int state;
    int waiting;   /* final replies still expected in this state */
    int step;      /* without pipelining: 0 MAIL, 1 RCPT, 2 DATA */
    long id;       /* the message on its way */
    char in[8192];
    size_t have;
    char *out;
    size_t out_len, out_off;
};

static const char *rcpt;
static char *body;
static size_t body_len;
static int pipelining = 1;
static long next_id, total, accepted;
static char envelope[3][600];

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void queue(struct conn *c, const char *data, size_t len) {
    c->out = realloc(c->out, c->out_len - c->out_off + len);
    if (!c->out) die("realloc");
    if (c->out_off) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            die("write");
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
}

static void start_message(struct conn *c) {
    if (next_id >= total) {
        queue(c, "QUIT\r\n", 6);
        c->state = QUIT;
        c->waiting = 1;
        return;
    }
    c->id = next_id++;
    c->state = ENVELOPE;
    c->step = 0;
    if (pipelining) {
        char all[1800];
        int n = snprintf(all, sizeof all, "%s%s%s", envelope[0], envelope[1], envelope[2]);
        queue(c, all, (size_t)n);
        c->waiting = 3;
    } else {
        queue(c, envelope[0], strlen(envelope[0]));
        c->waiting = 1;
    }
}

static void final_reply(struct conn *c, const char *line) {
    int code = atoi(line);
    switch (c->state) {
    case GREETING:
        if (code != 220) goto refused;
        queue(c, "EHLO bench.example\r\n", 20);
        c->state = EHLO;
        return;
    case EHLO:
        if (code != 250) goto refused;
        start_message(c);
        return;
    case ENVELOPE: {
        int expected = c->step < 2 ? 250 : 354;
        if (code != expected) goto refused;
        c->step++;
        if (--c->waiting > 0) return;
        if (c->step < 3) {
            queue(c, envelope[c->step], strlen(envelope[c->step]));
            c->waiting = 1;
            return;
        }
        char head[64];
        int n = snprintf(head, sizeof head, "X-Bench-Id: %ld\r\n", c->id);
        queue(c, head, (size_t)n);
        queue(c, body, body_len);
        queue(c, ".\r\n", 3);
        c->state = BODY;
        c->waiting = 1;
        return;
    }
    case BODY:
        if (code != 250) goto refused;
        accepted++;
        start_message(c);
        return;
    case QUIT:
        c->state = DONE;
        return;
    }
refused:
    fprintf(stderr, "smtpload: unexpected reply in state %d: %s\n", c->state, line);
    exit(1);
}

static void readable(struct conn *c) {
    ssize_t n = read(c->fd, c->in + c->have, sizeof c->in - c->have - 1);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        die("read");
    }
    if (n == 0) {
        if (c->state != DONE && c->state != QUIT) {
            fprintf(stderr, "smtpload: the server closed a connection\n");
            exit(1);
        }
        c->state = DONE;
        return;
    }
    c->have += (size_t)n;
    c->in[c->have] = 0;
    char *start = c->in, *end;
    while ((end = memchr(start, '\n', c->have - (size_t)(start - c->in))) != NULL) {
        *end = 0;
        if (end - start >= 3 && start[3] != '-') final_reply(c, start);
        start = end + 1;
    }
    c->have -= (size_t)(start - c->in);
    memmove(c->in, start, c->have);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: smtpload HOST PORT CONNECTIONS MESSAGES RECIPIENT BODYFILE [PIPELINING]\n");
        return 2;
    }
    int conns = atoi(argv[3]);
    total = atol(argv[4]);
    rcpt = argv[5];
    if (argc > 7) pipelining = atoi(argv[7]);
    FILE *f = fopen(argv[6], "rb");
    if (!f) die(argv[6]);
    fseek(f, 0, SEEK_END);
    body_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    body = malloc(body_len + 1);
    if (fread(body, 1, body_len, f) != body_len) die("fread");
    fclose(f);
    snprintf(envelope[0], sizeof envelope[0], "MAIL FROM:<bench@example.org>\r\n");
    snprintf(envelope[1], sizeof envelope[1], "RCPT TO:<%s>\r\n", rcpt);
    snprintf(envelope[2], sizeof envelope[2], "DATA\r\n");

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "smtpload: not an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].state = GREETING;
        cs[i].waiting = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
    int live = conns;
    struct epoll_event events[64];
    while (live > 0) {
        int n = epoll_wait(ep, events, 64, 60000);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "smtpload: no progress for 60 s\n");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if (c->state == DONE) continue;
            int had_out = c->out_len > c->out_off;
            readable(c);
            if (c->state != DONE && c->out_len > c->out_off) flush_out(c);
            if (c->state == DONE) {
                close(c->fd);  /* (also leaves the epoll set) */
                live--;
                continue;
            }
            int has_out = c->out_len > c->out_off;
            if (has_out != had_out) {
                struct epoll_event ev = {.events = EPOLLIN | (has_out ? EPOLLOUT : 0), .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    unsigned long long ran = 0, waited = 0;
    FILE *sched = fopen("/proc/self/schedstat", "r");
    if (sched) {
        if (fscanf(sched, "%llu %llu", &ran, &waited) != 2) waited = 0;
        fclose(sched);
    }
    printf("accepted %ld seconds %.6f waited %.6f\n", accepted, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, (double)waited / 1e9);
    return accepted == total ? 0 : 1;
}
