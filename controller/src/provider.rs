//! Boot providers: how the controller powers a node off, makes it boot the rescue kernel once,
//! and takes the rescue media away again.
//!
//! - `command`: the operator's commands (ipmitool, a PDU, a QEMU monitor), with `{node}`,
//!   `{mac}` and `{rescue_ip}` replaced (and, at attach, the URLs of the repair's own medium:
//!   `{rescue_iso_url}`, `{rescue_kernel_url}`, `{rescue_initrd_url}`), each run with a timeout;
//! - `manual`: the controller alerts a person to do it;
//! - `redfish`: virtual media (`image_url`, templated the same way) and a one-time boot override
//!   through the BMC ([`crate::redfish`]).

use std::time::Duration;

use crate::cluster::{BootProvider, Node};
use crate::command::CommandError;
use crate::redfish::{Bmc, BmcOptions, PasswordFileError, RedfishError, Trust};

/// Why a provider could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no power_off command")]
    NoPowerOff,
    #[error("not a redfish provider")]
    NotRedfish,
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Password(#[from] PasswordFileError),
    #[error("Redfish {0}: {1}")]
    Redfish(String, Box<RedfishError>),
}

/// What a provider is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PowerOff,
    Attach,
    Detach,
}

/// Carries out `op` for `node`; `urls` fill the per-repair media placeholders (at attach).
/// `Ok(Some(message))` asks a human to act (manual provider).
pub fn run(
    node: &Node,
    op: Op,
    timeout: Duration,
    urls: &[(&str, String)],
) -> Result<Option<String>, ProviderError> {
    match &node.boot {
        BootProvider::Command {
            attach,
            detach,
            power_off,
        } => {
            let argv = match op {
                Op::Attach => attach,
                Op::Detach => detach,
                Op::PowerOff => power_off.as_ref().ok_or(ProviderError::NoPowerOff)?,
            };
            let argv: Vec<String> = argv.iter().map(|a| fill(a, node, urls)).collect();
            crate::command::run(&argv, &[], timeout)?;
            Ok(None)
        }
        BootProvider::Manual => Ok(Some(match op {
            Op::Attach => format!(
                "attach the rescue media to {} and boot it from it",
                node.name
            ),
            Op::Detach => format!("remove the rescue media from {}", node.name),
            Op::PowerOff => format!("power {} off", node.name),
        })),
        BootProvider::Redfish {
            endpoint,
            image_url,
            cold_boot_after_detach,
            ..
        } => {
            // One deadline for the whole operation: a cold boot after detach included.
            let bmc = redfish_bmc(&node.boot)?;
            let bmc = bmc.within(timeout);
            match op {
                Op::PowerOff => bmc.power_off(),
                Op::Attach => bmc.attach(&fill(image_url, node, urls)),
                Op::Detach => bmc.detach().and_then(|()| {
                    if *cold_boot_after_detach {
                        bmc.power_off()?;
                        bmc.power_on()?;
                    }
                    Ok(())
                }),
            }
            .map_err(|e| ProviderError::Redfish(endpoint.clone(), Box::new(e)))?;
            Ok(None)
        }
    }
}

/// Checks, without a request, what `node`'s provider will need: a Redfish BMC's password file
/// (a regular file only its owner can read), CA file and endpoint. The daemon calls it at
/// start, so a bad file stops it with the file's name instead of failing a repair later.
pub fn check(node: &Node) -> Result<(), ProviderError> {
    match &node.boot {
        BootProvider::Redfish { .. } => redfish_bmc(&node.boot).map(|_| ()),
        BootProvider::Command { .. } | BootProvider::Manual => Ok(()),
    }
}

/// A `redfish` provider's BMC, set up: password read, CA loaded, endpoint checked.
fn redfish_bmc(boot: &BootProvider) -> Result<Bmc, ProviderError> {
    let BootProvider::Redfish {
        endpoint,
        system,
        username,
        password_file,
        ca_file,
        insecure,
        insecure_http,
        ..
    } = boot
    else {
        return Err(ProviderError::NotRedfish);
    };
    let password = match password_file {
        Some(f) => Some(crate::redfish::read_password_file(f)?),
        None => None,
    };
    let trust = match (ca_file, insecure) {
        (_, true) => Trust::Insecure,
        (Some(f), false) => Trust::CaFile(f.clone()),
        (None, false) => Trust::PublicRoots,
    };
    Bmc::new(&BmcOptions {
        endpoint: endpoint.clone(),
        system: system.clone(),
        auth: username.clone().map(|u| (u, password.unwrap_or_default())),
        trust,
        insecure_http: *insecure_http,
    })
    .map_err(|e| ProviderError::Redfish(endpoint.clone(), Box::new(e)))
}

/// `text` with `{node}`, `{mac}`, `{rescue_ip}` and the placeholders of `urls` filled in.
pub fn fill(text: &str, node: &Node, urls: &[(&str, String)]) -> String {
    let mac = node.macs.first().map(|m| m.to_string()).unwrap_or_default();
    let mut out = text
        .replace("{node}", &node.name)
        .replace("{mac}", &mac)
        .replace("{rescue_ip}", &node.rescue.address.to_string());
    for (placeholder, url) in urls {
        out = out.replace(placeholder, url);
    }
    out
}
