//! A private containerd with its CRI plugin serving runtime handlers, driven by a real CRI
//! client (`k8s-cri`, gRPC over the containerd socket) as the kubelet drives it.
//!
//! Handlers: `nvidia` (this shim, config `shim-config.toml` of the caller), `nvidia-isolated`
//! (this shim, a Kubernetes isolation-profile config) and `runc` (the Go runc shim, for the
//! benchmark). Pods get a network from Debian's CNI plugins (`bridge` + `host-local`, a bridge and
//! an IP range of their own), or the host's with [`PodOptions::host_network`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    CdiDevice, ContainerConfig, ContainerMetadata, ContainerState, ContainerStats,
    ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ImageSpec as CriImage, KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{Containerd, BUSYBOX_IMAGE};
use crate::image::ImageSpec;
use crate::{leftovers, shim_binary};

/// The namespace the CRI plugin keeps its containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The sandbox image the CRI plugin is configured with (imported, never pulled).
pub const PAUSE_IMAGE: &str = "docker.io/library/nvtest-pause:latest";
/// busybox without `Env` in its config.
pub const NO_ENV_IMAGE: &str = "docker.io/library/nvtest-noenv:latest";
/// The runtime handler served by this shim with the caller's config.
pub const HANDLER: &str = "nvidia";
/// The runtime handler served by this shim with the Kubernetes isolation profile.
pub const HANDLER_ISOLATED: &str = "nvidia-isolated";
/// The runtime handler served by the Go runc shim.
pub const HANDLER_RUNC: &str = "runc";

/// A containerd with CRI, its CNI network and a connected CRI runtime client.
#[derive(Debug)]
pub struct Cri {
    /// The containerd (dropped last: it cleans up what a failed test left).
    pub containerd: Containerd,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    bridge: String,
    cgroup_parent: String,
}

/// The shim configs of the two handlers this shim serves.
#[derive(Debug, Clone)]
pub struct HandlerConfigs {
    /// `nvidia`'s `config.toml` text.
    pub nvidia: String,
    /// `nvidia-isolated`'s `config.toml` text.
    pub isolated: String,
    /// Register the `nvidia` handler with the shim's own `configure containerd` on the written
    /// config file (as an operator does) instead of the harness's TOML.
    pub nvidia_by_configure: bool,
    /// Register the `nvidia` handler without `options` (the shim reads its default config
    /// path): containerd 2.x gives user-namespace pods' task I/O owner in runc's options and
    /// fails StartContainer when a handler has options of another type.
    pub nvidia_without_options: bool,
    /// Run another containerd release, whose `containerd`, `ctr` and `containerd-shim-runc-v2`
    /// are in this directory (Debian trixie's 1.7: `debian_packages::containerd17()?.bin_dir()`);
    /// `None`: the host's.
    pub containerd_release: Option<PathBuf>,
    /// Turn on the CRI plugin's own CDI (containerd >= 1.7: `enable_cdi = true`) with these
    /// spec directories (`cdi_spec_dirs`); empty: CDI stays off, the shim owns it.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Pods' network namespaces under the host's `/run/netns` (containerd's default), not
    /// under this containerd's state directory (see README, "User namespaces").
    pub netns_under_run: bool,
}

impl Default for HandlerConfigs {
    fn default() -> Self {
        Self {
            nvidia: String::new(),
            isolated:
                "accept_envvar_when_unprivileged = false\naccept_volume_mount_requests = true\n"
                    .into(),
            nvidia_by_configure: false,
            nvidia_without_options: false,
            containerd_release: None,
            cdi_spec_dirs: Vec::new(),
            netns_under_run: false,
        }
    }
}

/// How a pod is created.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// Share the host's network namespace instead of a CNI network.
    pub host_network: bool,
    /// Pod annotations.
    pub annotations: HashMap<String, String>,
    /// A privileged sandbox (which privileged containers need).
    pub privileged: bool,
    /// A user namespace of its own (`hostUsers: false`): container ids 0..size map to host
    /// uids from the first and host gids from the second.
    pub userns: Option<(u32, u32, u32)>,
}

/// One app container of a pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// Its name in the pod.
    pub name: String,
    /// Entrypoint and arguments.
    pub command: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// Container annotations (the device plugin's CDI requests arrive here).
    pub annotations: HashMap<String, String>,
    /// Bind mounts `(host, container)`, read-only.
    pub mounts: Vec<(String, String)>,
    /// Run privileged.
    pub privileged: bool,
    /// The image (default: busybox).
    pub image: Option<String>,
    /// The mounts' propagation (`MountPropagation` of the CRI API: 0 private, 1 host to
    /// container, 2 bidirectional); their source must then be on a shared mount.
    pub mount_propagation: i32,
    /// Fully qualified CDI device names (`vendor.com/class=name`), sent as the container
    /// config's `CDI_devices` (field 17): containerd >= 1.7 with `enable_cdi` applies them
    /// before the runtime sees the spec.
    pub cdi_devices: Vec<String>,
}

impl ContainerOptions {
    /// A container `name` running `sh -c script`.
    pub fn sh(name: &str, script: &str) -> Self {
        Self {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Self::default()
        }
    }
}

/// A process exit seen through `ExecSync`.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Its exit code.
    pub exit_code: i32,
}

impl Cri {
    /// Starts containerd with the CRI plugin, the three handlers and a CNI network; imports the
    /// pause and busybox images into `k8s.io`. `configs` are the shim configs of the handlers.
    pub fn start(configs: &HandlerConfigs) -> Result<Self> {
        Self::start_with(&shim_binary(), configs)
    }

    /// [`Cri::start`] with the shim binary `shim`.
    pub fn start_with(shim: &Path, configs: &HandlerConfigs) -> Result<Self> {
        // A bridge, an address range and a cgroup parent per CRI containerd: the tests run
        // side by side in one process.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = (std::process::id() * 16 + n) % 10_000;
        let bridge = format!("nvcri{tag}");
        let cgroup_parent = format!("/{}", crate::unique_id("nvcri"));
        let mut builder = Containerd::builder()
            .shim(shim)
            .log_level("info")
            .cri(|dir| cri_config(dir, configs, &bridge, tag));
        if let Some(release) = &configs.containerd_release {
            builder = builder.release(release);
        }
        if configs.nvidia_by_configure {
            builder = builder.configured_by_shim(|dir| {
                vec![
                    "--runtime-name".into(),
                    HANDLER.into(),
                    "--config-path-option".into(),
                    dir.join("shim-nvidia.toml").display().to_string(),
                ]
            });
        }
        let containerd = builder.start()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let socket = containerd.socket();
        let client = rt.block_on(connect(socket))?;
        let me = Self {
            containerd,
            rt,
            client,
            bridge,
            cgroup_parent,
        };
        me.containerd
            .import_in(CRI_NAMESPACE, &ImageSpec::pause()?, PAUSE_IMAGE)?;
        me.containerd
            .import_in(CRI_NAMESPACE, &ImageSpec::busybox()?, BUSYBOX_IMAGE)?;
        me.containerd
            .import_in(CRI_NAMESPACE, &ImageSpec::without_env()?, NO_ENV_IMAGE)?;
        Ok(me)
    }

    /// The cgroup parent of every pod (`/nvcri-<pid>-<n>`, under each v1 controller or the v2
    /// root).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// `RunPodSandbox` with `handler`; returns the sandbox id.
    pub fn run_pod(&self, name: &str, handler: &str, opts: &PodOptions) -> Result<String> {
        let req = RunPodSandboxRequest {
            config: Some(self.pod_config(name, opts)),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call(req, &format!("{name} ({handler})"))?
            .pod_sandbox_id)
    }

    /// [`Cri::run_pod`] with one app container, `app`, started in it; the pod's and the
    /// app's ids.
    pub fn run_pod_with(
        &self,
        name: &str,
        handler: &str,
        opts: &PodOptions,
        app: &ContainerOptions,
    ) -> Result<[String; 2]> {
        let pod = self.run_pod(name, handler, opts)?;
        let app = self.run_container(&pod, name, opts, app)?;
        Ok([pod, app])
    }

    /// Sends `req`, a CRI request about `object`; a failure carries the RPC's name, `object`
    /// and the end of containerd's log, where the CRI plugin says why.
    fn call<R: Rpc>(&self, req: R, object: &str) -> Result<R::Response> {
        self.rt
            .block_on(req.send(self.client.clone()))
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                let log = self.containerd.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                status(s)
                    .context(format!("containerd log:\n{}", tail.join("\n")))
                    .context(format!("{} {object}", R::NAME))
            })
    }

    /// [`Cri::call`] of the request `R` about the container or pod `id`.
    fn call_on<R: Rpc + ById>(&self, id: &str) -> Result<R::Response> {
        self.call(R::by_id(id), id)
    }

    fn pod_config(&self, name: &str, opts: &PodOptions) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            // As the kubelet does: a host-network pod shares the host's UTS namespace, so it
            // gets no hostname of its own (runc and libcontainer refuse one).
            hostname: if opts.host_network {
                String::new()
            } else {
                name.into()
            },
            annotations: opts.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(opts)),
                    privileged: opts.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `CreateContainer` + `StartContainer` of `c` in pod `pod` (`pod_name`, created with
    /// `opts`); returns the container id.
    pub fn run_container(
        &self,
        pod: &str,
        pod_name: &str,
        opts: &PodOptions,
        c: &ContainerOptions,
    ) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: 0,
            }),
            image: Some(CriImage {
                image: c.image.clone().unwrap_or_else(|| BUSYBOX_IMAGE.into()),
                ..Default::default()
            }),
            command: c.command.clone(),
            envs: c
                .env
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: c
                .mounts
                .iter()
                .map(|(host, path)| Mount {
                    host_path: host.clone(),
                    container_path: path.clone(),
                    readonly: c.mount_propagation != 2,
                    propagation: c.mount_propagation,
                    ..Default::default()
                })
                .collect(),
            annotations: c.annotations.clone(),
            cdi_devices: c
                .cdi_devices
                .iter()
                .map(|name| CdiDevice { name: name.clone() })
                .collect(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    privileged: c.privileged,
                    // As the kubelet sends them: the pod's network and IPC, a PID namespace of
                    // the container's own (no shareProcessNamespace).
                    namespace_options: Some(namespaces(opts)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(self.pod_config(pod_name, opts)),
        };
        let id = self.call(req, &c.name)?.container_id;
        self.call_on::<StartContainerRequest>(&id)?;
        Ok(id)
    }

    /// `ContainerStatus`: the state of container `id`.
    pub fn container_state(&self, id: &str) -> Result<ContainerState> {
        let status = self.call_on::<ContainerStatusRequest>(id)?.status;
        let state = status.context("ContainerStatus without status")?.state;
        Ok(ContainerState::try_from(state).unwrap_or(ContainerState::ContainerUnknown))
    }

    /// `ExecSync` of `cmd` in container `id` with a 30 s timeout.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 30,
        };
        let resp = self.call(req, &format!("{cmd:?} in {id}"))?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
            exit_code: resp.exit_code,
        })
    }

    /// `ExecSync` of `sh -c script`, failing unless it exits 0; returns its stdout.
    pub fn sh(&self, id: &str, script: &str) -> Result<String> {
        let out = self.exec(id, &["sh", "-c", script])?;
        if out.exit_code != 0 {
            bail!(
                "`{script}` in {id} exited {}: {}{}",
                out.exit_code,
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// `ContainerStats` of container `id`.
    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        let stats = self.call_on::<ContainerStatsRequest>(id)?.stats;
        stats.context("ContainerStats without stats")
    }

    /// `PodSandboxStatus`: the runtime handler containerd recorded for pod `pod`.
    pub fn pod_handler(&self, pod: &str) -> Result<String> {
        let status = self.call_on::<PodSandboxStatusRequest>(pod)?.status;
        Ok(status
            .context("PodSandboxStatus without status")?
            .runtime_handler)
    }

    /// `StopContainer` (10 s grace) and `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.call_on::<StopContainerRequest>(id)?;
        self.call_on::<RemoveContainerRequest>(id)?;
        Ok(())
    }

    /// `StopPodSandbox` and `RemovePodSandbox` (which also removes the pod's containers).
    pub fn remove_pod(&self, pod: &str) -> Result<()> {
        self.call_on::<StopPodSandboxRequest>(pod)?;
        self.call_on::<RemovePodSandboxRequest>(pod)?;
        Ok(())
    }

    /// The host pid of container `id`'s init process, from its task (`ctr -n k8s.io task ls`).
    pub fn pid_of(&self, id: &str) -> Result<i32> {
        let out = self
            .containerd
            .ctr_cmd_in(CRI_NAMESPACE, &["task", "ls"])
            .output()
            .context("ctr task ls")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
            })
            .with_context(|| format!("no task {id} in ctr task ls"))
    }

    /// Cgroup directories left under the pods' cgroup parent, on v1 (any controller) or v2.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        leftovers::cgroups_under(&self.cgroup_parent)
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // containerd and whatever a failed test left of its pods first, then the bridge and the
        // cgroups under the pods' parent, which are ours.
        self.containerd.shutdown();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        leftovers::remove_cgroups_under(&self.cgroup_parent);
    }
}

/// The namespaces of a pod and its containers.
fn namespaces(opts: &PodOptions) -> NamespaceOption {
    let network = if opts.host_network {
        NamespaceMode::Node
    } else {
        NamespaceMode::Pod
    };
    let map = |host_id: u32, length: u32| k8s_cri::v1::IdMapping {
        host_id,
        container_id: 0,
        length,
    };
    NamespaceOption {
        network: network as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        userns_options: opts
            .userns
            .map(|(uid, gid, size)| k8s_cri::v1::UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![map(uid, size)],
                gids: vec![map(gid, size)],
            }),
        ..Default::default()
    }
}

/// A CRI error as text: tonic's `Status` displays without its message.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn connect(socket: PathBuf) -> Result<RuntimeServiceClient<Channel>> {
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .context("connect to containerd's CRI socket")?;
    Ok(RuntimeServiceClient::new(channel))
}

/// Writes the shim configs and the CNI network under `dir`; returns the CRI plugin's TOML.
fn cri_config(dir: &Path, configs: &HandlerConfigs, bridge: &str, tag: u32) -> Result<String> {
    let nvidia_cfg = dir.join("shim-nvidia.toml");
    let isolated_cfg = dir.join("shim-isolated.toml");
    std::fs::write(&nvidia_cfg, &configs.nvidia)?;
    std::fs::write(&isolated_cfg, &configs.isolated)?;
    let net_dir = dir.join("cni");
    std::fs::create_dir_all(&net_dir)?;
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": format!("nvtest-{tag}"),
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("10.{}.{}.0/24", 100 + tag / 256 % 100, tag % 256) }]],
                "dataDir": dir.join("cni-ipam"),
            },
        }],
    });
    std::fs::write(net_dir.join("10-nvtest.conflist"), conflist.to_string())?;
    let runtime = |name: &str, ty: &str, cfg: Option<&Path>| {
        let mut t = format!(
            r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
  runtime_type = "{ty}"
  # GPU requests only from the kubelet (container annotations), never from the pod's author.
  container_annotations = ["cdi.k8s.io/*", "nvidia.com/*"]
"#
        );
        if let Some(cfg) = cfg {
            t += &format!(
                r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
  ConfigPath = "{}"
"#,
                cfg.display()
            );
        }
        t
    };
    Ok(format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # Pod network namespaces are mounted under this containerd's own state dir, not the host's
  # /run/netns: what a test leaves there goes with the containerd.
  netns_mounts_under_state_dir = {netns_under_state}
  # The shim owns CDI here, as under containerd 1.6 (which has no CDI) and 1.7 (off by
  # default); containerd 2.x turns its own CDI on and resolves `cdi.k8s.io/` annotations from
  # its spec directories before any runtime sees them (see README, "Who applies CDI").
  # A test may turn containerd's own CDI on (1.7+), with spec directories of its own.
{cdi}
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{net}"
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "{HANDLER_RUNC}"
{nvidia}{isolated}{runc}"#,
        net = net_dir.display(),
        netns_under_state = !configs.netns_under_run,
        cdi = if configs.cdi_spec_dirs.is_empty() {
            "  enable_cdi = false".to_owned()
        } else {
            format!(
                "  enable_cdi = true\n  cdi_spec_dirs = {}",
                toml::Value::Array(
                    configs
                        .cdi_spec_dirs
                        .iter()
                        .map(|d| toml::Value::String(d.display().to_string()))
                        .collect()
                )
            )
        },
        nvidia = if configs.nvidia_by_configure {
            String::new()
        } else {
            runtime(
                HANDLER,
                crate::containerd::RUNTIME,
                (!configs.nvidia_without_options).then_some(nvidia_cfg.as_path()),
            )
        },
        isolated = runtime(
            HANDLER_ISOLATED,
            crate::containerd::RUNTIME,
            Some(&isolated_cfg)
        ),
        runc = runtime(HANDLER_RUNC, "io.containerd.runc.v2", None),
    ))
}

type Client = RuntimeServiceClient<Channel>;

/// A request of the CRI runtime service: the RPC that sends it.
trait Rpc: Sized {
    /// The RPC's response.
    type Response;
    /// The RPC's name, for errors.
    const NAME: &'static str;
    /// Sends it with `client`.
    fn send(
        self,
        client: Client,
    ) -> impl std::future::Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>>;
}

/// A request that names only a container or a pod (and fixed settings).
trait ById {
    /// The request about `id`.
    fn by_id(id: &str) -> Self;
}

/// The CRI RPCs the harness sends: `Request => Response: method "Name"`, with `{ id_field,
/// settings }` for the requests that name only a container or a pod.
macro_rules! rpcs {
    ($($req:ident $({ $id:ident $(, $field:ident: $value:expr)* })? => $resp:ident: $method:ident $name:literal;)*) => {
        $(
            impl Rpc for $req {
                type Response = k8s_cri::v1::$resp;
                const NAME: &'static str = $name;
                async fn send(self, mut client: Client) -> Result<tonic::Response<Self::Response>, tonic::Status> {
                    client.$method(self).await
                }
            }
            $(
                impl ById for $req {
                    // The update fills what the table leaves (`verbose`), where there is any.
                    #[allow(clippy::needless_update)]
                    fn by_id(id: &str) -> Self {
                        Self { $id: id.into(), $($field: $value,)* ..Default::default() }
                    }
                }
            )?
        )*
    };
}

rpcs! {
    RunPodSandboxRequest => RunPodSandboxResponse: run_pod_sandbox "RunPodSandbox";
    CreateContainerRequest => CreateContainerResponse: create_container "CreateContainer";
    StartContainerRequest { container_id } => StartContainerResponse: start_container "StartContainer";
    ContainerStatusRequest { container_id } => ContainerStatusResponse: container_status "ContainerStatus";
    ExecSyncRequest => ExecSyncResponse: exec_sync "ExecSync";
    ContainerStatsRequest { container_id } => ContainerStatsResponse: container_stats "ContainerStats";
    PodSandboxStatusRequest { pod_sandbox_id } => PodSandboxStatusResponse: pod_sandbox_status "PodSandboxStatus";
    StopContainerRequest { container_id, timeout: 10 } => StopContainerResponse: stop_container "StopContainer";
    RemoveContainerRequest { container_id } => RemoveContainerResponse: remove_container "RemoveContainer";
    StopPodSandboxRequest { pod_sandbox_id } => StopPodSandboxResponse: stop_pod_sandbox "StopPodSandbox";
    RemovePodSandboxRequest { pod_sandbox_id } => RemovePodSandboxResponse: remove_pod_sandbox "RemovePodSandbox";
}
