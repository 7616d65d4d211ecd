//! Snapshots, restores and images end to end: real `mafs lockd` and mount processes, the
//! `mafs snapshot`/`restore` commands, a kill -9 in the middle.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mafs_tests::fs_cluster::ClusterVolume;
use mafs_tests::fs_mount::{code_and_text, mafs, spawn_mount, tear_down, Mounted};
use mafs_tests::workload::{written_size, Writer};

/// `mafs ARGS`, which must succeed; its standard output.
fn mafs_ok(args: &[&str]) -> String {
    let o = mafs(args);
    let (code, text) = code_and_text(&o);
    assert_eq!(code, 0, "mafs {args:?} failed:\n{text}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The id a `snapshot create` printed last.
fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_string()
}

/// A field of `mafs snapshot show`.
fn show_field(store: &Path, id: &str, field: &str) -> String {
    let out = mafs_ok(&["snapshot", "show", id, "--store", store.to_str().unwrap()]);
    let line = out.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field} in:\n{out}"));
    line.split_once(':').unwrap().1.trim().to_string()
}

/// What one node's workload had made durable when a snapshot began (`before`: its log then),
/// and how far it had got when the snapshot ended (`next_after`: no round it began is
/// numbered this high).
struct AtSnapshot {
    name: String,
    before: String,
    next_after: u64,
}

/// The restored tree at `mnt` holds exactly a state of the volume at a moment during the
/// snapshot: every file and journal record made durable before it began, whole; nothing begun
/// after it ended; every file there whole.
fn check_restored(mnt: &Path, w: &AtSnapshot, full_log: &str) {
    let name = &w.name;
    let sums: HashMap<u64, &str> = full_log
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .filter_map(|r| r.split_once(' '))
        .filter_map(|(i, s)| Some((i.parse().ok()?, s)))
        .collect();
    let deleted: HashSet<u64> = full_log.lines().filter_map(|l| l.strip_prefix("del ")).filter_map(|i| i.parse().ok()).collect();
    let journal = fs::read_to_string(mnt.join("journal")).unwrap_or_default();
    for line in w.before.lines() {
        let Some((i, sum)) = line.strip_prefix("ok ").and_then(|r| r.split_once(' ')) else { continue };
        let i: u64 = i.parse().unwrap();
        let record = format!("{name} rec {i}");
        assert_eq!(journal.lines().filter(|l| *l == record).count(), 1, "{record:?}, fsynced before the snapshot, not exactly once");
        if deleted.contains(&i) {
            continue;
        }
        let f = mnt.join(name).join(format!("f{i}"));
        assert!(f.exists(), "{name}/f{i}, fsynced before the snapshot, is missing");
        assert_eq!(md5_of(&f), sum, "{name}/f{i} differs from what was fsynced");
    }
    for rec in journal.lines().filter_map(|l| l.strip_prefix(&format!("{name} rec "))) {
        let i: u64 = rec.parse().unwrap();
        assert!(i < w.next_after, "record {i} of {name} was begun after the snapshot ended");
    }
    for e in fs::read_dir(mnt.join(name)).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(i) = f.strip_prefix('f').and_then(|i| i.parse::<u64>().ok()) else { continue };
        assert!(i < w.next_after, "{name}/{f} was begun after the snapshot ended");
        let path = mnt.join(name).join(&f);
        assert_eq!(fs::metadata(&path).unwrap().len(), written_size(i), "{name}/{f} is not whole");
        if let Some(sum) = sums.get(&i) {
            assert_eq!(md5_of(&path), *sum, "{name}/{f} differs from what was written");
        }
    }
}

/// md5sum of a file, as the workload logged it.
fn md5_of(path: &Path) -> String {
    let o = std::process::Command::new("md5sum").arg(path).output().expect("md5sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Takes a snapshot of the cluster's volume while `writers` run; what each had done.
fn snapshot_during(c: &ClusterVolume, store: &Path, writers: &[Writer], names: &[&str]) -> (String, Vec<AtSnapshot>) {
    let before: Vec<String> = writers.iter().map(Writer::log_text).collect();
    let ep = c.lockd.endpoints();
    let out = mafs_ok(&[
        "snapshot",
        "create",
        c.vol.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--lockd",
        &ep,
        "--tag",
        "test=cluster",
    ]);
    let at = names
        .iter()
        .zip(writers)
        .zip(before)
        .map(|((n, w), before)| AtSnapshot { name: n.to_string(), before, next_after: w.next_round() })
        .collect();
    (last_line(&out), at)
}

/// Restores `id` beside the cluster's volume, checks it with fsck, mounts it standalone while
/// the cluster runs, and checks every workload's files in it.
fn restore_and_check(c: &ClusterVolume, store: &Path, id: &str, at: &[AtSnapshot], logs: &[String]) {
    let dir = c.vol.parent().unwrap();
    let restored = dir.join(format!("{id}.img"));
    let uuid = last_line(&mafs_ok(&["restore", id, restored.to_str().unwrap(), "--store", store.to_str().unwrap()]));
    let (code, text) = code_and_text(&mafs(["fsck".as_ref(), restored.as_os_str()]));
    assert_eq!(code, 0, "fsck of the restored {id}:\n{text}");
    let info = mafs_ok(&["info", c.vol.to_str().unwrap()]);
    assert!(!info.contains(&uuid), "the restored volume kept the original's UUID {uuid}");
    let mnt = dir.join(format!("{id}.mnt"));
    fs::create_dir_all(&mnt).unwrap();
    let log = dir.join(format!("{id}.log"));
    let child = spawn_mount(&restored, &mnt, &["--standalone"], &log).unwrap_or_else(|e| panic!("mounting the restored {id}: {e}"));
    for (w, full) in at.iter().zip(logs) {
        check_restored(&mnt, w, full);
    }
    tear_down(&mnt, Some(child));
    let (code, text) = code_and_text(&mafs(["fsck".as_ref(), restored.as_os_str()]));
    assert_eq!(code, 0, "fsck of the restored {id} after its mount:\n{text}");
}

#[test]
fn snapshots_during_a_three_node_workload_restore_to_the_state_at_their_freeze_even_after_a_node_died() {
    let mut c = ClusterVolume::unmounted("256M", &["--slots", "4"]);
    let names = ["node1", "node2", "node3"];
    for n in names {
        c.mount(n, &[]);
    }
    for n in names {
        fs::create_dir(c.node(0).path(n)).unwrap();
    }
    let host = c.vol.parent().unwrap().to_path_buf();
    let store = host.join("store");
    let mut writers: Vec<Writer> =
        names.iter().enumerate().map(|(i, n)| Writer::start(&c.node(i).mnt, n, host.join(format!("{n}.writes")))).collect();
    let progressed = |ws: &[Writer], by: usize, base: &[usize]| ws.iter().zip(base).all(|(w, b)| w.logged() >= b + by);
    assert!(mafs_tests::wait_until(Duration::from_secs(60), || progressed(&writers, 5, &[0, 0, 0])), "the workloads made no progress");

    let (first, at_first) = snapshot_during(&c, &store, &writers, &names);
    // A node dies with the workload running; the survivors recover it and go on.
    let base: Vec<usize> = writers.iter().map(Writer::logged).collect();
    c.kill9(1);
    writers[1].stop();
    let survivors = [0usize, 2];
    assert!(
        mafs_tests::wait_until(Duration::from_secs(60), || survivors.iter().all(|&k| writers[k].logged() >= base[k] + 5)),
        "the survivors did not go on after node2 died"
    );
    let (second, at_second) = snapshot_during(&c, &store, &writers, &names);
    assert_eq!(show_field(&store, &second, "parent"), first, "the second snapshot is incremental on the first");
    let read: u64 = show_field(&store, &second, "chunks read").parse().unwrap();
    assert!(read < 512, "the incremental snapshot read {read} of 512 chunks");
    for (k, w) in writers.into_iter().enumerate() {
        if k == 1 {
            continue;
        }
        w.stop_expecting_no_error(names[k]);
    }
    let logs: Vec<String> = names.iter().map(|n| fs::read_to_string(host.join(format!("{n}.writes"))).unwrap_or_default()).collect();
    restore_and_check(&c, &store, &first, &at_first, &logs);
    restore_and_check(&c, &store, &second, &at_second, &logs);
    c.finish();
}

/// Writes `mib` MiB of random bytes to `path` and makes them durable.
fn write_random(path: &Path, offset_mib: u64, mib: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut data = vec![0u8; (mib << 20) as usize];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut data).unwrap();
    let mut f = fs::OpenOptions::new().create(true).write(true).truncate(false).open(path).unwrap();
    f.seek(SeekFrom::Start(offset_mib << 20)).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
}

/// Every regular file under `dir` with its md5sum, by relative path.
fn tree_sums(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.insert(e.path().strip_prefix(dir).unwrap().display().to_string(), md5_of(&e.path()));
            }
        }
    }
    out
}

fn create_snapshot(vol: &Path, store: &Path) -> String {
    last_line(&mafs_ok(&["snapshot", "create", vol.to_str().unwrap(), "--store", store.to_str().unwrap()]))
}

/// Restores `id` into `scratch`, checks it with fsck and returns its files' sums.
fn restored_tree(store: &Path, id: &str, scratch: &Path) -> std::collections::BTreeMap<String, String> {
    let img = scratch.join(format!("{id}.img"));
    mafs_ok(&["restore", id, img.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    let (code, text) = code_and_text(&mafs(["fsck".as_ref(), img.as_os_str()]));
    assert_eq!(code, 0, "fsck of the restored {id}:\n{text}");
    let mnt = scratch.join(format!("{id}.mnt"));
    fs::create_dir_all(&mnt).unwrap();
    let child =
        spawn_mount(&img, &mnt, &["--standalone"], &scratch.join(format!("{id}.log"))).unwrap_or_else(|e| panic!("mount {id}: {e}"));
    let mut sums = tree_sums(&mnt);
    sums.retain(|k, _| !k.starts_with("lost+found"));
    tear_down(&mnt, Some(child));
    fs::remove_file(&img).unwrap();
    sums
}

#[test]
fn an_incremental_snapshot_after_changing_one_percent_of_the_data_stores_about_one_percent_more() {
    let m = Mounted::new("256M");
    for i in 0..20 {
        write_random(&m.path(format!("f{i}")), 0, 10);
    }
    let store = m.scratch().join("store");
    let first = create_snapshot(&m.vol, &store);
    // 2 MiB of the 200 MiB.
    write_random(&m.path("f7"), 3, 2);
    let want = tree_sums(&m.mnt);
    let second = create_snapshot(&m.vol, &store);
    assert_eq!(show_field(&store, &second, "parent"), first);
    let added = |id: &str| show_field(&store, id, "bytes added").parse::<f64>().unwrap();
    let ratio = added(&second) / added(&first);
    eprintln!("first snapshot added {} bytes, the second {} ({:.2}%)", added(&first), added(&second), ratio * 100.0);
    assert!((0.008..0.025).contains(&ratio), "a 1% change stored {:.2}% more", ratio * 100.0);
    let mut got = restored_tree(&store, &second, m.scratch());
    got.retain(|k, _| want.contains_key(k));
    assert_eq!(got, want, "the restored incremental snapshot differs from the volume");
    m.finish();
}

#[test]
fn a_snapshot_killed_mid_upload_leaves_no_snapshot_and_the_next_one_succeeds() {
    let mut m = Mounted::new("512M");
    for i in 0..10 {
        write_random(&m.path(format!("f{i}")), 0, 40);
    }
    let want = tree_sums(&m.mnt);
    m.unmount_clean();
    let store = m.scratch().join("store");
    let mut child = std::process::Command::new(mafs_tests::mafs_bin())
        .args(["snapshot", "create", m.vol.to_str().unwrap(), "--store", store.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let chunks = || {
        fs::read_dir(store.join("chunks"))
            .map(|d| d.flatten().map(|s| fs::read_dir(s.path()).map(|f| f.count()).unwrap_or(0)).sum())
            .unwrap_or(0usize)
    };
    assert!(mafs_tests::wait_until(Duration::from_secs(30), || chunks() >= 40), "the upload did not start");
    assert!(child.try_wait().unwrap().is_none(), "the snapshot finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = mafs_ok(&["snapshot", "list", "--store", store.to_str().unwrap()]);
    assert_eq!(listed.lines().count(), 1, "a killed snapshot is listed:\n{listed}");
    let id = create_snapshot(&m.vol, &store);
    let listed = mafs_ok(&["snapshot", "list", "--store", store.to_str().unwrap()]);
    assert!(listed.contains(&id) && listed.lines().count() == 2, "{listed}");
    assert_eq!(restored_tree(&store, &id, m.scratch()), want);
    m.finish();
}

#[test]
fn a_store_that_fills_up_gives_a_clear_error_and_no_snapshot() {
    let mut m = Mounted::new("256M");
    for i in 0..4 {
        write_random(&m.path(format!("f{i}")), 0, 10);
    }
    m.unmount_clean();
    let store = m.scratch().join("small-store");
    fs::create_dir(&store).unwrap();
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"]).arg(&store).status().unwrap();
    assert!(st.success(), "cannot mount a small tmpfs for the store");
    let o = mafs(["snapshot", "create", m.vol.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    let (code, text) = code_and_text(&o);
    let listed = mafs(["snapshot", "list", "--store", store.to_str().unwrap()]);
    let _ = std::process::Command::new("umount").arg(&store).status();
    assert_ne!(code, 0, "a snapshot into a full store succeeded:\n{text}");
    assert!(text.contains("full"), "the error does not say the store is full:\n{text}");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1, "a failed snapshot is listed");
    m.finish();
}

#[test]
fn deleting_snapshots_keeps_every_chunk_the_others_need_even_while_one_is_created() {
    let m = Mounted::new("256M");
    let store = m.scratch().join("store");
    write_random(&m.path("a"), 0, 30);
    let s1 = create_snapshot(&m.vol, &store);
    let t1 = tree_sums(&m.mnt);
    write_random(&m.path("a"), 5, 3);
    write_random(&m.path("b"), 0, 20);
    let s2 = create_snapshot(&m.vol, &store);
    fs::remove_file(m.path("b")).unwrap();
    write_random(&m.path("c"), 0, 10);
    let s3 = create_snapshot(&m.vol, &store);
    let t3 = tree_sums(&m.mnt);
    write_random(&m.path("d"), 0, 10);
    let t4 = tree_sums(&m.mnt);
    // A create and a delete at once: the delete's collection must not take chunks the create
    // found in the store and names in its manifest.
    let (vol, st) = (m.vol.clone(), store.clone());
    let creating = std::thread::spawn(move || create_snapshot(&vol, &st));
    mafs_ok(&["snapshot", "delete", &s2, "--store", store.to_str().unwrap()]);
    let s4 = creating.join().unwrap();
    let (code, text) = code_and_text(&mafs(["snapshot", "delete", &s1, "--store", store.to_str().unwrap()]));
    assert_eq!(code, 0, "{text}");
    // s1 alone named the bytes of `a` that s2 overwrote.
    let removed: usize =
        text.split(" unused chunks removed").next().and_then(|t| t.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(removed >= 6, "deleting the first snapshot removed {removed} chunks; its 3 MiB of overwritten data alone are 6:\n{text}");
    let listed = mafs_ok(&["snapshot", "list", "--store", store.to_str().unwrap()]);
    assert!(!listed.contains(&s1) && !listed.contains(&s2) && listed.contains(&s3) && listed.contains(&s4), "{listed}");
    let strip = |mut t: std::collections::BTreeMap<String, String>| {
        t.retain(|k, _| !k.starts_with("lost+found"));
        t
    };
    assert_eq!(restored_tree(&store, &s3, m.scratch()), strip(t3));
    assert_eq!(restored_tree(&store, &s4, m.scratch()), strip(t4));
    assert_ne!(t1.len(), 0);
    m.finish();
}

/// An S3-compatible server (moto, from PyPI) on 127.0.0.1 with one bucket, reached through a
/// link that can be cut; stopped on drop.
struct S3Server {
    child: std::process::Child,
    net: mafs_tests::net_proxy::Net,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        let port = mafs_tests::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the moto S3 server (pip install 'moto[server]')");
        let target = format!("127.0.0.1:{port}");
        let up = mafs_tests::wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(&target).is_ok());
        assert!(up, "the moto S3 server did not come up on {target}");
        let mut net = mafs_tests::net_proxy::Net::new();
        let endpoint = format!("http://{}", net.link(0, 1, &target));
        // Make the bucket: a bare S3 PUT.
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&target).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "cannot make the bucket: {reply}");
        S3Server { child, net, endpoint }
    }

    /// `mafs ARGS` with the server as its S3 endpoint.
    fn mafs(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(mafs_tests::mafs_bin());
        c.args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.mafs(args).output().unwrap();
        let (code, text) = code_and_text(&o);
        assert_eq!(code, 0, "mafs {args:?} failed:\n{text}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_s3_store_keeps_snapshots_and_a_server_gone_mid_upload_leaves_none() {
    let s3 = S3Server::start("snaps");
    let store = "s3://snaps/volumes";
    let mut m = Mounted::new("256M");
    write_random(&m.path("a"), 0, 20);
    let first_tree = tree_sums(&m.mnt);
    m.unmount_clean();
    let vol = m.vol.to_str().unwrap().to_string();
    let first = last_line(&s3.ok(&["snapshot", "create", &vol, "--store", store]));
    let img = m.scratch().join("from-s3.img");
    s3.ok(&["restore", &first, img.to_str().unwrap(), "--store", store]);
    let mnt = m.scratch().join("from-s3");
    fs::create_dir(&mnt).unwrap();
    let child = spawn_mount(&img, &mnt, &["--standalone"], &m.scratch().join("from-s3.log")).unwrap();
    let mut got = tree_sums(&mnt);
    tear_down(&mnt, Some(child));
    got.retain(|k, _| !k.starts_with("lost+found"));
    let mut want = first_tree;
    want.retain(|k, _| !k.starts_with("lost+found"));
    assert_eq!(got, want, "the volume restored from S3 differs");

    m.mount();
    write_random(&m.path("b"), 0, 150);
    m.unmount_clean();
    let mut creating =
        s3.mafs(&["snapshot", "create", &vol, "--store", store, "--full"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(creating.try_wait().unwrap().is_none(), "the snapshot finished before the server could go");
    s3.net.set(0, 1, mafs_tests::net_proxy::LinkMode::Drop);
    let out = creating.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a snapshot whose server went away succeeded");
    assert!(err.contains("s3://snaps/volumes"), "the error does not name the store:\n{err}");
    s3.net.heal();
    let listed = s3.ok(&["snapshot", "list", "--store", store]);
    assert_eq!(listed.lines().count(), 2, "only the first snapshot is listed:\n{listed}");
    let third = last_line(&s3.ok(&["snapshot", "create", &vol, "--store", store]));
    let listed = s3.ok(&["snapshot", "list", "--store", store]);
    assert!(listed.contains(&third) && listed.lines().count() == 3, "{listed}");
    m.finish();
}

/// A POSIX ACL as its xattr holds it: (tag, permissions, id) entries after version 2.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A tree with every kind of file the image keeps.
fn make_tree(root: &Path) {
    use mafs_tests::fs_mount::setxattr;
    use std::os::unix::fs::PermissionsExt;
    let cmd = |args: &[&str]| assert!(std::process::Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    fs::create_dir_all(root.join("etc/app")).unwrap();
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::write(root.join("etc/app/config"), "threads = 8\n").unwrap();
    write_random(&root.join("blob"), 0, 3);
    // Sparse: 64 MiB with data only at 40 MiB.
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"island", 40 << 20).unwrap();
    fs::hard_link(root.join("etc/app/config"), root.join("shared/config-link")).unwrap();
    std::os::unix::fs::symlink("../etc/app/config", root.join("shared/config-sym")).unwrap();
    std::os::unix::fs::symlink("x".repeat(300), root.join("long-symlink")).unwrap();
    cmd(&["mknod", root.join("null").to_str().unwrap(), "c", "1", "3"]);
    cmd(&["mknod", root.join("loopish").to_str().unwrap(), "b", "7", "200"]);
    cmd(&["mkfifo", root.join("fifo").to_str().unwrap()]);
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    setxattr(&root.join("blob"), "user.origin", b"golden", 0).unwrap();
    setxattr(&root.join("etc/app/config"), "user.big", &vec![b'v'; 2000], 0).unwrap();
    let nobody = (2u16, 4u16, 65534u32);
    let (uo, go, mask, other) = ((1u16, 7u16, u32::MAX), (4u16, 5u16, u32::MAX), (0x10u16, 5u16, u32::MAX), (0x20u16, 5u16, u32::MAX));
    setxattr(&root.join("blob"), "system.posix_acl_access", &acl_xattr(&[uo, nobody, go, mask, other]), 0).unwrap();
    setxattr(&root.join("shared"), "system.posix_acl_default", &acl_xattr(&[uo, nobody, go, mask, other]), 0).unwrap();
    cmd(&["chown", "1234:5678", root.join("blob").to_str().unwrap()]);
    fs::set_permissions(root.join("blob"), fs::Permissions::from_mode(0o4754)).unwrap();
    cmd(&["chown", "-h", "42:43", root.join("shared/config-sym").to_str().unwrap()]);
    cmd(&["touch", "-h", "-d", "2021-03-04 05:06:07.123456789", root.join("shared/config-sym").to_str().unwrap()]);
    cmd(&["touch", "-d", "2020-01-02 03:04:05", root.join("etc").to_str().unwrap()]);
}

/// What a tree shows of each entry: type and mode, owner, size, mtime, device number, link
/// target, data sum, extended attributes, and which names are one file.
fn describe_tree(root: &Path) -> Vec<String> {
    use mafs_tests::fs_mount::{getxattr, listxattr};
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut inodes: HashMap<u64, String> = HashMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel.starts_with("lost+found") {
            continue;
        }
        let mut line = format!("{rel} {:o} {}:{} rdev {} mtime {}.{}", m.mode(), m.uid(), m.gid(), m.rdev(), m.mtime(), m.mtime_nsec());
        if !m.is_dir() {
            line += &format!(" size {}", m.len());
        }
        if m.file_type().is_symlink() {
            line += &format!(" -> {}", fs::read_link(&p).unwrap().display());
        } else {
            if m.is_file() {
                line += &format!(" md5 {}", md5_of(&p));
                if m.nlink() > 1 {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    line += &format!(" same file as {first}");
                }
                if m.len() > (32 << 20) {
                    assert!(m.blocks() * 512 < (4 << 20), "{rel}: {} bytes allocated for a sparse file", m.blocks() * 512);
                }
            }
            let mut names = listxattr(&p).unwrap_or_default();
            names.sort();
            for n in names {
                line += &format!(" {n}={:?}", getxattr(&p, &n).unwrap());
            }
        }
        out.push(line);
        if m.is_dir() {
            let mut kids: Vec<PathBuf> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            kids.sort();
            todo.extend(kids.into_iter().rev());
        }
    }
    out.sort();
    out
}

#[test]
fn an_image_of_a_tree_with_every_file_type_launches_three_volumes_that_mount_at_once_and_equal_the_tree() {
    let dir = tempfile::Builder::new().prefix("mafs-image-test.").tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    let src = root.join("src");
    make_tree(&src);
    let want = describe_tree(&src);
    let (one, two) = (root.join("one.img"), root.join("two.img"));
    let uuid = last_line(&mafs_ok(&["image", "build", "--from", src.to_str().unwrap(), "--size", "256M", one.to_str().unwrap()]));
    mafs_ok(&["image", "build", "--from", src.to_str().unwrap(), "--size", "256M", two.to_str().unwrap()]);
    assert!(fs::read(&one).unwrap() == fs::read(&two).unwrap(), "the same tree built twice gave different bytes");
    let launched: Vec<PathBuf> =
        mafs_ok(&["image", "launch", one.to_str().unwrap(), "--count", "3", "--out", root.join("vols").to_str().unwrap()])
            .lines()
            .map(PathBuf::from)
            .collect();
    assert_eq!(launched.len(), 3);
    let mut uuids = HashSet::from([uuid]);
    let mut mounts = Vec::new();
    for (k, vol) in launched.iter().enumerate() {
        let (code, text) = code_and_text(&mafs(["fsck".as_ref(), vol.as_os_str()]));
        assert_eq!(code, 0, "fsck of {}:\n{text}", vol.display());
        let info = mafs_ok(&["info", vol.to_str().unwrap()]);
        let u = info.lines().find(|l| l.starts_with("uuid:")).unwrap().split_whitespace().nth(1).unwrap().to_string();
        assert!(uuids.insert(u), "{} shares a UUID", vol.display());
        let mnt = root.join(format!("mnt{k}"));
        fs::create_dir(&mnt).unwrap();
        let child = spawn_mount(vol, &mnt, &["--standalone"], &root.join(format!("mnt{k}.log")))
            .unwrap_or_else(|e| panic!("mount {}: {e}", vol.display()));
        mounts.push((mnt, child));
    }
    // All three mounted at once, each equal to the tree.
    for (mnt, _) in &mounts {
        assert_eq!(describe_tree(mnt), want, "{} differs from the source tree", mnt.display());
    }
    for (mnt, child) in mounts {
        tear_down(&mnt, Some(child));
    }
}
