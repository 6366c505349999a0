/*
 * vtio: the Linux peer's helper, built static by the test (`cc -static`)
 * and run inside the guest's initramfs. It does what busybox cannot:
 * O_DIRECT pattern writes and checks, BLKZEROOUT, fallocate punch holes,
 * per-CPU read loops, and TCP transfers whose every byte is checked.
 *
 * The pattern (shared with the host side, harness/src/linux.rs): the 8
 * bytes at absolute offset o (o a multiple of 8) are the little-endian
 * u64 o ^ seed. For a TCP stream the offset counts from the first byte.
 *
 * Every command prints one line, "ok ..." or "FAIL ...", and exits 0 or 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static int fail(const char *what)
{
	printf("FAIL %s: %s\n", what, strerror(errno));
	return 1;
}

static uint64_t num(const char *s)
{
	return strtoull(s, NULL, 0);
}

static uint8_t pattern_byte(uint64_t o, uint64_t seed)
{
	uint64_t w = (o & ~(uint64_t)7) ^ seed;
	return (uint8_t)(w >> (8 * (o & 7)));
}

static void fill(uint8_t *buf, size_t len, uint64_t off, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern_byte(off + i, seed);
}

/* The first offset in buf (at absolute off) that is not the pattern, or -1. */
static int64_t mismatch(const uint8_t *buf, size_t len, uint64_t off, uint64_t seed, int zero)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t want = zero ? 0 : pattern_byte(off + i, seed);
		if (buf[i] != want)
			return (int64_t)(off + i);
	}
	return -1;
}

static uint8_t *aligned(size_t len)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, len) != 0)
		return NULL;
	return p;
}

/* Reads [off, off+len) with O_DIRECT and compares with the pattern (or zeros). */
static int check(const char *dev, uint64_t off, uint64_t len, uint64_t seed, int zero)
{
	int fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0)
		return fail("open");
	uint8_t *buf = aligned(CHUNK);
	if (!buf)
		return fail("alloc");
	for (uint64_t done = 0; done < len;) {
		size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
		ssize_t r = pread(fd, buf, n, (off_t)(off + done));
		if (r != (ssize_t)n)
			return fail("pread");
		int64_t bad = mismatch(buf, n, off + done, seed, zero);
		if (bad >= 0) {
			printf("FAIL byte %lld is %u\n", (long long)bad,
			       buf[bad - (int64_t)(off + done)]);
			return 1;
		}
		done += n;
	}
	close(fd);
	printf("ok %llu bytes %s\n", (unsigned long long)len, zero ? "zero" : "match");
	return 0;
}

/* Writes the pattern with O_DIRECT, fsyncs (FLUSH), and checks it back. */
static int write_pattern(const char *dev, uint64_t off, uint64_t len, uint64_t seed)
{
	int fd = open(dev, O_WRONLY | O_DIRECT);
	if (fd < 0)
		return fail("open");
	uint8_t *buf = aligned(CHUNK);
	if (!buf)
		return fail("alloc");
	for (uint64_t done = 0; done < len;) {
		size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
		fill(buf, n, off + done, seed);
		if (pwrite(fd, buf, n, (off_t)(off + done)) != (ssize_t)n)
			return fail("pwrite");
		done += n;
	}
	if (fsync(fd) != 0)
		return fail("fsync");
	close(fd);
	return check(dev, off, len, seed, 0);
}

static int zeroout(const char *dev, uint64_t off, uint64_t len)
{
	int fd = open(dev, O_WRONLY);
	if (fd < 0)
		return fail("open");
	uint64_t range[2] = {off, len};
	if (ioctl(fd, BLKZEROOUT, range) != 0)
		return fail("BLKZEROOUT");
	close(fd);
	printf("ok zeroed %llu bytes\n", (unsigned long long)len);
	return 0;
}

static int punch(const char *dev, uint64_t off, uint64_t len)
{
	int fd = open(dev, O_WRONLY);
	if (fd < 0)
		return fail("open");
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0)
		return fail("fallocate PUNCH_HOLE|KEEP_SIZE");
	close(fd);
	printf("ok punched %llu bytes\n", (unsigned long long)len);
	return 0;
}

/* count O_DIRECT 4 KiB reads walking over the first 16 MiB. */
static int reads(const char *dev, uint64_t count)
{
	int fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0)
		return fail("open");
	uint8_t *buf = aligned(4096);
	if (!buf)
		return fail("alloc");
	for (uint64_t i = 0; i < count; i++) {
		off_t o = (off_t)((i * 4096 * 7) % (16 << 20));
		if (pread(fd, buf, 4096, o) != 4096)
			return fail("pread");
	}
	close(fd);
	printf("ok %llu reads\n", (unsigned long long)count);
	return 0;
}

static int full_write(int s, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(s, p, n);
		if (w <= 0) {
			if (w < 0 && errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* send: BYTES of the pattern to the host, which answers "ok N" once it has
 * checked them; recv: BYTES of the pattern from the host, checked here. */
static int tcp(const char *host, uint64_t port, const char *dir, uint64_t bytes, uint64_t seed)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		return fail("socket");
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		printf("FAIL bad address %s\n", host);
		return 1;
	}
	if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0)
		return fail("connect");
	char line[128];
	int n = snprintf(line, sizeof(line), "%s %llu %llu\n", dir, (unsigned long long)bytes,
			 (unsigned long long)seed);
	if (full_write(s, (uint8_t *)line, (size_t)n) != 0)
		return fail("write header");
	static uint8_t buf[CHUNK];
	if (strcmp(dir, "send") == 0) {
		for (uint64_t done = 0; done < bytes;) {
			size_t k = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK;
			fill(buf, k, done, seed);
			if (full_write(s, buf, k) != 0)
				return fail("write");
			done += k;
		}
		shutdown(s, SHUT_WR);
		size_t got = 0;
		ssize_t r;
		while (got < sizeof(line) - 1 && (r = read(s, line + got, sizeof(line) - 1 - got)) > 0)
			got += (size_t)r;
		line[got] = 0;
		if (strncmp(line, "ok", 2) != 0) {
			printf("FAIL host says: %s\n", line);
			return 1;
		}
		printf("ok sent %llu bytes, host: %s", (unsigned long long)bytes, line);
		return 0;
	}
	uint64_t done = 0;
	while (done < bytes) {
		size_t want = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK;
		ssize_t r = read(s, buf, want);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			printf("FAIL stream ended after %llu of %llu bytes\n", (unsigned long long)done,
			       (unsigned long long)bytes);
			return 1;
		}
		int64_t bad = mismatch(buf, (size_t)r, done, seed, 0);
		if (bad >= 0) {
			printf("FAIL stream byte %lld\n", (long long)bad);
			return 1;
		}
		done += (uint64_t)r;
	}
	printf("ok received %llu bytes\n", (unsigned long long)bytes);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 6 && strcmp(argv[1], "check") == 0)
		return check(argv[2], num(argv[3]), num(argv[4]), num(argv[5]), 0);
	if (argc >= 5 && strcmp(argv[1], "zero") == 0)
		return check(argv[2], num(argv[3]), num(argv[4]), 0, 1);
	if (argc >= 6 && strcmp(argv[1], "write") == 0)
		return write_pattern(argv[2], num(argv[3]), num(argv[4]), num(argv[5]));
	if (argc >= 5 && strcmp(argv[1], "zeroout") == 0)
		return zeroout(argv[2], num(argv[3]), num(argv[4]));
	if (argc >= 5 && strcmp(argv[1], "punch") == 0)
		return punch(argv[2], num(argv[3]), num(argv[4]));
	if (argc >= 4 && strcmp(argv[1], "reads") == 0)
		return reads(argv[2], num(argv[3]));
	if (argc >= 7 && strcmp(argv[1], "tcp") == 0)
		return tcp(argv[2], num(argv[3]), argv[4], num(argv[5]), num(argv[6]));
	printf("FAIL usage: vtio check|zero|write|zeroout|punch|reads|tcp ...\n");
	return 1;
}
