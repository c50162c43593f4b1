//! `viking mesh`'s commands and flags (smesh: bootstraps a cluster of
//! machines with Docker and etcd). The binary runs them through the
//! `viking-mesh` crate.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `viking mesh`.
#[derive(Subcommand, Debug)]
pub enum MeshCommand {
    /// Start a mesh on this machine: an etcd member and a viking server;
    /// prints the command that joins another machine.
    Init(MeshInitArgs),
    /// Join this machine to a mesh (an etcd member while etcd has fewer than
    /// --max-members, else a viking server only).
    Join(MeshJoinArgs),
    /// The etcd members (health, leader) and the viking servers.
    Status {
        #[command(flatten)]
        dir: MeshDir,
        #[arg(long)]
        json: bool,
    },
    /// Take this machine out of the mesh (etcd member removed, server gone).
    Leave {
        #[command(flatten)]
        dir: MeshDir,
        /// Leave even when etcd cannot be reached, or end the mesh when this
        /// is its last etcd member.
        #[arg(long)]
        force: bool,
    },
    /// Start this machine's etcd member and server again from the data
    /// directory (after `stop` or a reboot).
    Start {
        #[command(flatten)]
        dir: MeshDir,
        /// Stay in the foreground.
        #[arg(long)]
        foreground: bool,
    },
    /// Stop this machine's server and etcd member (it stays in the mesh).
    Stop {
        #[command(flatten)]
        dir: MeshDir,
    },
    /// The supervisor in the foreground (for systemd): runs etcd and the
    /// server and restarts them when they exit.
    Up {
        #[command(flatten)]
        dir: MeshDir,
    },
    /// Defragment etcd's members one at a time, giving the space that
    /// compaction freed back to the disk; prints each member's database
    /// size before and after. A member answers nothing while it
    /// defragments: run it when the cluster is quiet.
    Defrag {
        #[command(flatten)]
        dir: MeshDir,
    },
    /// Print the join token (it admits machines, not operators); with
    /// --rotate, replace it: the old one is refused from then on, machines
    /// already in the mesh are not affected.
    Token {
        #[command(flatten)]
        dir: MeshDir,
        /// Make a new join token and print it.
        #[arg(long)]
        rotate: bool,
    },
}

/// The data directory of `viking mesh`.
#[derive(Args, Debug, Clone)]
pub struct MeshDir {
    /// The viking data directory (default: /var/lib/viking for root).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Settings shared by `mesh init` and `mesh join`.
#[derive(Args, Debug, Clone)]
pub struct MeshMachineArgs {
    #[command(flatten)]
    pub dir: MeshDir,
    /// This machine's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The address other machines reach this one at (default: found from
    /// the route).
    #[arg(long)]
    pub ip: Option<String>,
    /// This server's tags, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Where the viking server listens (default 0.0.0.0:8791).
    #[arg(long)]
    pub listen: Option<String>,
    /// Run etcd as a supervised child process from this binary, instead of a
    /// container.
    #[arg(long, conflicts_with = "etcd_image")]
    pub etcd_binary: Option<PathBuf>,
    /// Run etcd as a container of this image on the local Docker engine,
    /// with a restart policy (default: quay.io/coreos/etcd:v3.5.17).
    #[arg(long)]
    pub etcd_image: Option<String>,
    /// Stay in the foreground (the supervisor runs in this process).
    #[arg(long)]
    pub foreground: bool,
    /// etcd's backend quota in bytes (members only): past it etcd refuses
    /// every write (NOSPACE) until compacted, defragmented and disarmed.
    #[arg(long, default_value_t = 2 << 30)]
    pub quota_backend_bytes: u64,
    /// Extra arguments for `viking server`, after `--`.
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

/// `viking mesh init`.
#[derive(Args, Debug, Clone)]
pub struct MeshInitArgs {
    #[command(flatten)]
    pub machine: MeshMachineArgs,
    /// The operator's token for the API (default: a new random one). Not
    /// the join token, which `init` makes and prints.
    #[arg(long, env = "VIKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The prefix of every key in the store.
    #[arg(long, default_value = "/viking")]
    pub key: String,
}

/// `viking mesh join`.
#[derive(Args, Debug, Clone)]
pub struct MeshJoinArgs {
    /// A viking server of the mesh: HOST[:PORT].
    pub addr: String,
    /// The join token (VKJ-1-...) printed by `viking mesh init` or
    /// `viking mesh token`.
    #[arg(long, env = "VIKING_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    #[command(flatten)]
    pub machine: MeshMachineArgs,
    /// How many etcd members the mesh grows to (an odd number).
    #[arg(long, default_value_t = 3)]
    pub max_members: usize,
}
