/*
 * vtio: the Linux peer's helper, built static by the test (`cc -static`)
 * and run inside the guest's initramfs. It does what busybox cannot:
 * O_DIRECT pattern writes and checks, BLKZEROOUT, fallocate punch holes,
 * per-CPU read loops, TCP transfers whose every byte is checked, and
 * AES-CBC through AF_ALG bound to one driver by name.
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
#include <linux/if_alg.h>
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

#ifndef SOL_ALG
#define SOL_ALG 279
#endif

/* An AF_ALG request socket for skcipher DRIVER (a driver name such as
 * virtio_crypto_aes_cbc, so nothing else can stand in) with KEY set. */
static int alg_open(const char *driver, const uint8_t *key, size_t keylen)
{
	struct sockaddr_alg sa = {.salg_family = AF_ALG, .salg_type = "skcipher"};
	strncpy((char *)sa.salg_name, driver, sizeof(sa.salg_name) - 1);
	int tfm = socket(AF_ALG, SOCK_SEQPACKET, 0);
	if (tfm < 0)
		return -1;
	int op = -1;
	if (bind(tfm, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    setsockopt(tfm, SOL_ALG, ALG_SET_KEY, key, (socklen_t)keylen) == 0)
		op = accept(tfm, NULL, 0);
	/* The request socket keeps the transform. */
	int saved = errno;
	close(tfm);
	errno = saved;
	return op;
}

/* One operation on OP: LEN bytes of IN, encrypted or decrypted under the
 * 16-byte IV, into OUT. */
static int alg_run(int op, int encrypt, const uint8_t *iv, const uint8_t *in, uint8_t *out,
		   size_t len)
{
	union {
		char buf[CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct af_alg_iv) + 16)];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec v = {.iov_base = (void *)in, .iov_len = len};
	struct msghdr m = {
	    .msg_iov = &v, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_OP;
	c->cmsg_len = CMSG_LEN(sizeof(uint32_t));
	uint32_t dir = encrypt ? ALG_OP_ENCRYPT : ALG_OP_DECRYPT;
	memcpy(CMSG_DATA(c), &dir, sizeof(dir));
	c = CMSG_NXTHDR(&m, c);
	c->cmsg_level = SOL_ALG;
	c->cmsg_type = ALG_SET_IV;
	c->cmsg_len = CMSG_LEN(sizeof(struct af_alg_iv) + 16);
	struct af_alg_iv *a = (struct af_alg_iv *)CMSG_DATA(c);
	a->ivlen = 16;
	memcpy(a->iv, iv, 16);
	ssize_t sent = sendmsg(op, &m, 0);
	if (sent < 0)
		return -1;
	if (sent != (ssize_t)len) {
		errno = EMSGSIZE;
		return -1;
	}
	for (size_t got = 0; got < len;) {
		ssize_t r = read(op, out + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* afalg DRIVER REF: AES-128-CBC through DRIVER: NIST SP 800-38A F.2.1
 * both ways (the vector is a fact of that publication), then buffers of
 * sizes from one block to 64 KiB encrypted by DRIVER and by REF (the
 * kernel's software implementation) and compared, and decrypted back. */
static int afalg(const char *driver, const char *ref)
{
	static const uint8_t key[16] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
					0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c};
	static const uint8_t iv[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
	static const uint8_t pt[32] = {0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96,
				       0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a,
				       0xae, 0x2d, 0x8a, 0x57, 0x1e, 0x03, 0xac, 0x9c,
				       0x9e, 0xb7, 0x6f, 0xac, 0x45, 0xaf, 0x8e, 0x51};
	static const uint8_t ct[32] = {0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46,
				       0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9, 0x19, 0x7d,
				       0x50, 0x86, 0xcb, 0x9b, 0x50, 0x72, 0x19, 0xee,
				       0x95, 0xdb, 0x11, 0x3a, 0x91, 0x76, 0x78, 0xb2};
	int dev = alg_open(driver, key, sizeof(key));
	if (dev < 0)
		return fail(driver);
	int sw = alg_open(ref, key, sizeof(key));
	if (sw < 0)
		return fail(ref);
	static uint8_t in[65536], out[65536], mine[65536], back[65536];
	unsigned ops = 0;
	if (alg_run(dev, 1, iv, pt, out, 32) != 0)
		return fail("encrypting the vector");
	ops++;
	if (memcmp(out, ct, 32) != 0) {
		printf("FAIL the SP 800-38A F.2.1 ciphertext differs\n");
		return 1;
	}
	if (alg_run(dev, 0, iv, ct, out, 32) != 0)
		return fail("decrypting the vector");
	ops++;
	if (memcmp(out, pt, 32) != 0) {
		printf("FAIL the SP 800-38A F.2.2 plaintext differs\n");
		return 1;
	}
	static const size_t sizes[] = {16, 48, 4080, 4096, 4112, 16384, 32768, 61440, 65520, 65536};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i];
		fill(in, n, i * 65536, 0x5eed);
		if (alg_run(dev, 1, iv, in, mine, n) != 0)
			return fail("encrypting");
		if (alg_run(sw, 1, iv, in, out, n) != 0)
			return fail("encrypting with the reference");
		if (memcmp(mine, out, n) != 0) {
			size_t at = 0;
			while (mine[at] == out[at])
				at++;
			printf("FAIL %zu bytes: %s and %s differ from byte %zu\n", n, driver, ref, at);
			return 1;
		}
		if (alg_run(dev, 0, iv, mine, back, n) != 0)
			return fail("decrypting");
		if (memcmp(back, in, n) != 0) {
			printf("FAIL %zu bytes did not decrypt back\n", n);
			return 1;
		}
		ops += 2;
	}
	close(dev);
	close(sw);
	printf("ok %u operations through %s match the vector and %s\n", ops, driver, ref);
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
	if (argc >= 4 && strcmp(argv[1], "afalg") == 0)
		return afalg(argv[2], argv[3]);
	printf("FAIL usage: vtio check|zero|write|zeroout|punch|reads|tcp|afalg ...\n");
	return 1;
}
