//! What keeps a node closed while its agent is down: the programs' links
//! and maps pinned in bpffs under `<bpffs>/mesh/<node>/` (ARCHITECTURE.md,
//! "Pins"). Links are made and updated with raw `bpf(2)` calls: aya 0.14
//! cannot pin a cgroup/connect link nor swap a link's program.
//!
//! | file | what |
//! |---|---|
//! | `link_<program>` | the bpf link attaching `<program>` (cgroup root or netns) |
//! | `link_netns_<inode>` | the link attaching sk_lookup to the container network namespace `<inode>` |
//! | `<MAP>` | each map, by name (aya pins them: `default_map_pin_directory`) |

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use super::EbpfError;
use crate::names::NodeName;

/// The start of a link's pin name: `link_<program>`; maps are pinned by
/// their names, which never start with it.
pub const LINK_PREFIX: &str = "link_";

/// The start of a container guard's program name in its link's pin name:
/// `link_netns_<inode>`.
const GUARD_PREFIX: &str = "netns_";

/// bpffs's magic number (`statfs` `f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// bpf(2) commands and attach types (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub const BPF_CGROUP_INET4_BIND: u32 = 8;
pub const BPF_CGROUP_INET6_BIND: u32 = 9;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_SK_LOOKUP: u32 = 36;

/// `bpf_attr` for `BPF_OBJ_PIN` / `BPF_OBJ_GET`. No implicit padding: the
/// kernel refuses non-zero bytes past the last field.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE` (no target-specific part).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info`: its per-type union starts at
/// offset 16 (it holds `__aligned_u64`s).
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    per_type: [u64; 6],
}

// `enum bpf_link_type` (include/uapi/linux/bpf.h).
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

/// What a link attaches its program to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A cgroup, by id (its inode in cgroup2); 0 once the cgroup is gone.
    Cgroup(u64),
    /// A network namespace, by nsfs inode; 0 once the namespace is gone.
    Netns(u64),
    /// A link of another type.
    Other(u32),
}

impl Target {
    /// The target an open cgroup directory or netns file is, for a link
    /// of `attach_type`.
    pub fn of(fd: BorrowedFd<'_>, attach_type: u32) -> io::Result<Self> {
        let inode = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(io::Error::from)?
            .st_ino;
        Ok(if attach_type == BPF_SK_LOOKUP {
            Self::Netns(inode)
        } else {
            Self::Cgroup(inode)
        })
    }
}

/// `bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf(cmd, attr, sizeof attr)`; the kernel zero-fills the rest of its
/// `bpf_attr`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized `#[repr(C)]` prefix of the
    // kernel's `bpf_attr` for `cmd`, and the size passed is its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An fd the kernel just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// A new bpf link attaching `prog` to `target` (a cgroup or netns fd).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    owned(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// Makes `link` run `prog` instead, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        ..LinkUpdateAttr::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What the kernel says of `link`.
fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The id of the program `link` runs.
pub fn link_program(link: BorrowedFd<'_>) -> io::Result<u32> {
    link_info(link).map(|info| info.prog_id)
}

/// What `link` is attached to.
pub fn link_target(link: BorrowedFd<'_>) -> io::Result<Target> {
    let info = link_info(link)?;
    let first = info.per_type[0];
    Ok(match info.link_type {
        // `struct { __u64 cgroup_id; __u32 attach_type; } cgroup`
        BPF_LINK_TYPE_CGROUP => Target::Cgroup(first),
        // `struct { __u32 netns_ino; __u32 attach_type; } netns`
        BPF_LINK_TYPE_NETNS => {
            let [a, b, c, d, ..] = first.to_ne_bytes();
            Target::Netns(u64::from(u32::from_ne_bytes([a, b, c, d])))
        }
        other => Target::Other(other),
    })
}

/// Pins `fd` at `path` in bpffs.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The object pinned at `path`.
pub fn get(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        ..ObjAttr::default()
    };
    owned(bpf(BPF_OBJ_GET, &mut attr)?)
}

/// Where one node's programs and maps are pinned: `<bpffs>/mesh/<node>`.
#[derive(Debug, Clone)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    /// The pins of `node` under the bpffs at `bpffs`, mounting bpffs there
    /// first if it is not mounted (in this process's mount namespace: pins
    /// outlive the agent only if that is the host's).
    pub fn open(bpffs: &Path, node: &NodeName) -> Result<Self, EbpfError> {
        let fail = |source| EbpfError::Pins {
            path: bpffs.display().to_string(),
            source,
        };
        if !is_bpffs(bpffs) {
            fs::create_dir_all(bpffs).map_err(fail)?;
            nix::mount::mount(
                Some("bpf"),
                bpffs,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                Some("mode=0700"),
            )
            .map_err(|e| fail(e.into()))?;
            tracing::warn!(path = %bpffs.display(), "mounted bpffs: the pins outlive this agent only if this mount namespace does (the host's /sys/fs/bpf is best)");
        }
        Ok(Self::at(bpffs, node))
    }

    /// The pins of `node` under `bpffs`, without mounting anything (a
    /// node name is one path component).
    pub fn at(bpffs: &Path, node: &NodeName) -> Self {
        Self {
            dir: bpffs.join("mesh").join(node.as_str()),
        }
    }

    /// The file of `program`'s link.
    pub fn link(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{LINK_PREFIX}{program}"))
    }

    /// The file of the link of sk_lookup in the container namespace
    /// `inode` (a link like the others: removed with them).
    pub fn guard(&self, inode: u64) -> PathBuf {
        self.link(&format!("{GUARD_PREFIX}{inode}"))
    }

    /// The container namespaces (inodes) with a guard pinned.
    pub fn guards(&self) -> Vec<u64> {
        let prefix = format!("{LINK_PREFIX}{GUARD_PREFIX}");
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Unpins everything of the node (links, then maps): the programs are
    /// detached once no process holds their links. Returns the names
    /// removed.
    pub fn remove(&self) -> Result<Vec<String>, EbpfError> {
        let fail = |source| EbpfError::Pins {
            path: self.dir.display().to_string(),
            source,
        };
        let mut names: Vec<String> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(fail(e)),
        };
        // Links first: no moment with programs attached and maps gone from
        // the file system (they would live on anyway, held by the programs).
        names.sort_by_key(|n| !n.starts_with(LINK_PREFIX));
        for name in &names {
            fs::remove_file(self.dir.join(name)).map_err(fail)?;
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        if let Some(parent) = self.dir.parent() {
            // The shared `mesh` directory, once no node uses it.
            let _ = fs::remove_dir(parent);
        }
        Ok(names)
    }
}

/// Whether `path` is the root of a mounted bpffs.
fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
