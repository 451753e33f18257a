//! `herd token new`: a random bearer token and the tokens-file lines that accept it.

use clap::Subcommand;
use rand::Rng;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a new random token and the [[token]] entry to append to the tokens file.
    New {
        /// Tenant the token may act for.
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        tenant: Option<String>,
        /// Make an admin token (all models and the repository API).
        #[arg(long)]
        admin: bool,
    },
    /// Print the sha256 line for an existing token (read from stdin).
    Hash,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New { tenant, admin } => {
            let bytes: [u8; 24] = rand::thread_rng().gen();
            let token = format!("herd_{}", hex_lower(&bytes));
            let hash = herd_server::auth::hash_token(&token);
            eprintln!("token (give it to the client; it is not stored): ");
            println!("{token}");
            eprintln!("\nappend to the tokens file:\n");
            eprintln!("[[token]]\nsha256 = \"{hash}\"");
            match tenant {
                Some(t) => eprintln!("tenant = \"{t}\""),
                None if admin => eprintln!("admin = true"),
                None => {}
            }
            Ok(())
        }
        TokenCommand::Hash => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
            println!("sha256 = \"{}\"", herd_server::auth::hash_token(s.trim()));
            Ok(())
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
