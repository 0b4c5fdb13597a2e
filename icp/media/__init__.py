"""Voice and video: WebRTC peers terminated by the server (aiortc), rooms, talkgroups and recordings."""
